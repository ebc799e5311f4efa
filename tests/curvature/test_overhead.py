"""The fixed costs of a first curvature call stay small (issue 19, point 6)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_memory_meter_does_not_import_dynamo():
    """The meter's dispatch mode runs without torch's dynamo-disabling wrapper, whose first use
    imports torch._dynamo (about 1 s of CPU, which the first product of a process paid)."""
    code = textwrap.dedent("""
        import sys
        import torch
        from landscape.hvp_memory import PeakNew
        with PeakNew() as meter:
            x = torch.ones(1000).mul(2)
        assert meter.peak >= 4000, meter.peak
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
