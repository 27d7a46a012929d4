"""The command line's subcommands, one module each (``suite/_cli/<subcommand>.py``): an ``Options`` dataclass
(``suite._cli.options``) that the parser fills, and ``main(options) -> int``. ``suite.cli`` builds the parser from
them and runs the one named; each module defers its heavy imports to ``main``, so ``--help`` loads no torch."""

# "module:options class", in the order ``suite --help`` lists them.
SUBCOMMANDS = (
    "suite._cli.run:RunOptions",
    "suite._cli.plan:PlanOptions",
    "suite._cli.doctor:DoctorOptions",
    "suite._cli.import_runs:ImportRunsOptions",
    "suite._cli.list:ListOptions",
    "suite._cli.references:ReferencesOptions",
    "suite._cli.report:ReportOptions",
    "suite._cli.quickstart:QuickstartOptions",
    "suite._cli.import_checkpoint:ImportCheckpointOptions",
)
