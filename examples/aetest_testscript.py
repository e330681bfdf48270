"""A pyATS aetest testscript that fans out with labq.pcall.

    LABQ_BROKER_URL=... python examples/aetest_testscript.py --devices r1 r2 r11

pcall's signature is pyATS's own; the calls run on the lab's workers instead
of forked children of this process.
"""

from __future__ import annotations

import argparse
import sys

from pyats import aetest

import labq
from tasks import device


class CommonSetup(aetest.CommonSetup):  # type: ignore[misc]
    @aetest.subsection  # type: ignore[misc]
    def check_devices(self, devices: list[str]) -> None:
        if not devices:
            self.failed("no devices given")


class ShowVersion(aetest.Testcase):  # type: ignore[misc]
    @aetest.test  # type: ignore[misc]
    def fan_out(self, devices: list[str]) -> None:
        try:
            outputs = labq.pcall(device.execute, device=devices,
                                 ckwargs={"command": "show version"}, timeout=120)
        except labq.TaskFailed as exc:
            self.failed(f"{exc.outcome.device}: {exc.error}")
        for name, output in zip(devices, outputs, strict=True):
            if "Cisco IOS" not in output:
                self.failed(f"{name} does not run IOS: {output[:80]!r}")
        self.passed(f"{len(devices)} devices answered")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", nargs="+", default=["r1", "r2", "r11"])
    args, rest = parser.parse_known_args()
    result = aetest.main(devices=args.devices)
    sys.exit(0 if str(result) == "passed" else 1)
