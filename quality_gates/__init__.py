"""Quality gates: the checks the runner itself runs on an agent's change before it lands."""

from quality_gates.gates import CommandGate, Gate, run_suite
from quality_gates.report import GateReport, GateStatus, SuiteReport

__all__ = ["CommandGate", "Gate", "GateReport", "GateStatus", "SuiteReport", "run_suite"]
