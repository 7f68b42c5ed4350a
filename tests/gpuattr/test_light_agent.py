"""The agent stays light: the real-NVML exporter loads none of the optional or heavy parts."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("pandas", "attribution", "pydantic", "kubernetes", "grpc", "opentelemetry", "simulator", "kmock")


def test_building_the_exporter_without_optional_flags_imports_no_heavy_module() -> None:
    code = (
        "import json, sys\n"
        "from exporter.app import build\n"
        "from exporter.settings import ExporterSettings\n"
        "exporter = build(ExporterSettings(listen='127.0.0.1:0'))\n"
        "exporter.server.stop()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []
