"""A verb the IB-like aux driver refuses: the errno the application's call fails with."""

from __future__ import annotations


class VerbsError(Exception):
    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err
        self.message = message


def refuse_if(condition: object, err: int, message: str) -> None:
    if condition:
        raise VerbsError(err, message)
