"""summary.md of a tools/gpu-check.sh run: its stages, the CUDA tests, the doctor's checks and the benchmark's
ratio table, from the files the stages wrote. Usage: python tools/gpu_check_summary.py OUT_DIR WORK_DIR"""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def section(text: str, start: str) -> str:
    """The lines of ``text`` from the first one starting with ``start`` on."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith(start)), None)
    return "" if first is None else "\n".join(lines[first:])


def main(out: Path, work: Path) -> None:
    print("# GPU check\n")
    env = work / "environment"
    print("```\n" + (env.read_text().strip() if env.exists() else "environment not read") + "\n```\n")
    print("| stage | exit | seconds | limit |\n|---|---|---|---|")
    for line in (work / "stages").read_text().splitlines() if (work / "stages").exists() else []:
        name, rc, seconds, limit = line.split("|")
        print(f"| {name} | {rc}{' (timed out)' if rc in ('124', '137') else ''} | {seconds} | {limit} |")

    junit = out / "test_cuda.xml"
    print("\n## CUDA tests\n")
    if junit.exists():
        print("| test | outcome | seconds |\n|---|---|---|")
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            detail = next((child.get("message", "") for child in case if child.tag != "system-out"), "")
            print(f"| {case.get('name')} | {outcome}{': ' + detail[:160].replace('|', '/') if detail else ''} "
                  f"| {float(case.get('time', 0)):.1f} |")
    else:
        print("no test report (see test_cuda.log)")

    for table in ("table3", "table1"):
        log = out / f"doctor-{table}.log"
        text = log.read_text() if log.exists() else ""
        found = section(text, "status  area")
        print(f"\n## doctor, {table}\n\n```\n{found or text[-3000:] or 'no output'}\n```")

    bench = out / "bench.log"
    lines = bench.read_text().splitlines() if bench.exists() else []
    start = next((i for i, line in enumerate(lines) if "equal-FLOP limit (median" in line), None)
    shown = lines[start:] if start is not None else lines[-40:]
    end = next((i for i, line in enumerate(shown[1:], 1) if line.startswith("=")), len(shown))
    print("\n## benchmark: joint step vs its equal-FLOP limit\n")
    print("```\n" + ("\n".join(shown[:end]) or "no output") + "\n```")
    record = out / "bench.json"
    if record.exists():
        rows = json.loads(record.read_text()).get("equal_flop", [])
        if rows:
            print("\n| arch | step | seconds | FP32 step | ratio | img/s | peak GiB |\n|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['arch']} | {r['step']} | {r['seconds']:.4f} | {r['unit_seconds']:.4f} | {r['ratio']:.2f} "
                      f"| {r['images_per_s']:.0f} | {r['peak_memory_gib'] if r['peak_memory_gib'] is not None else ''} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
