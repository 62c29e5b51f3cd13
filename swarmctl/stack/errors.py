"""Errors of the stack loader and deployer; every problem in a file names the file, line and key path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from swarmctl.errors import SwarmctlError


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in a stack file: ``web.yml:14 services.web.deploy.replicas: must be an integer``."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else f"{self.file}:"
        if not self.path:
            return f"{where.rstrip(':')}: {self.message}"
        return f"{where} {self.path}: {self.message}"


class StackError(SwarmctlError):
    """Root of the stack loader's and deployer's errors."""


class StackFileError(StackError):
    """One or more problems in the stack files; nothing was deployed. One problem per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class DeployError(StackError):
    """A deploy that failed part-way; what it had created was removed again (``undone`` names it)."""

    def __init__(self, message: str, undone: Sequence[str] = ()) -> None:
        text = message
        if undone:
            text += f" (removed what this deploy had created: {', '.join(undone)})"
        super().__init__(text)
        self.undone = tuple(undone)
