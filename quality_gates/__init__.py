"""Quality gates: the checks the runner itself runs on an agent's change before it lands."""

from quality_gates.diff import DEFAULT_FORBIDDEN, DiffGate, diff_gates
from quality_gates.gates import CommandGate, Gate, GateInput, run_suite
from quality_gates.report import GateReport, GateStatus, SuiteReport

__all__ = ["DEFAULT_FORBIDDEN", "CommandGate", "DiffGate", "Gate", "GateInput", "GateReport", "GateStatus",
           "SuiteReport", "diff_gates", "run_suite"]
