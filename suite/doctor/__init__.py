"""``python -m suite doctor [MANIFEST]``: a preflight of this machine for a manifest, in minutes.

It finds before a launch what would otherwise fail in hour three: the environment (versions, devices, memory,
disk), the data (found, and fast enough for the step), the step itself (time and peak memory of every arm at its
per-process batch, eager and compiled, in the manifest's precision; the plan's bill from these figures; how many
small jobs fill a GPU), the distributed path (a torchrun world of every GPU, or 2 gloo processes on a CPU: an
all-reduce, DDP steps with SyncBN equal to one process's, sharded evaluation equal to one process's) and the store
(a checkpoint written and read back data-only, the tracking store reachable and writable within its deadline).

Every check ends as one row: pass / warn / fail, the measured figure and the threshold it was held to. Any fail
makes the exit code 1.
"""
