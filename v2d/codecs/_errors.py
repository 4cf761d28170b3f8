"""
Errors raised while encoding or decoding payloads.

Decoding a client's bad input raises ``v2d.errors.InferenceError`` (a 400); the errors
here are the runtime's side: a payload no codec can encode, a missing optional
dependency, a type hint no codec knows (500s). ``InputsNotFound`` is the client's: a
request whose inputs the ``decode_args`` signature does not take (400).

Every one is an ``MLServerError``, as MLServer's codec errors are.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from v2d.errors import InferenceError, Internal, MLServerError

__all__ = ["CodecError", "CodecInputError", "CodecNotFound", "InputsNotFound", "OutputNotFound"]


class CodecError(MLServerError, Internal):
    """A payload could not be encoded or decoded by the runtime's codecs (a 500)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, 500)


class CodecInputError(CodecError, InferenceError):
    """A client's request does not fit the codec it names (e.g. two inputs for ``np``): a 400."""

    def __init__(self, msg: str) -> None:
        MLServerError.__init__(self, msg, 400)


class CodecNotFound(CodecError):
    """No registered codec handles a content type, payload or type hint."""


class OutputNotFound(CodecError):
    """A ``decode_args`` predict returned a value its return annotation does not allow."""

    def __init__(
        self, output_idx: Any, output_type: Any = None, output_hints: Optional[Sequence[Any]] = None
    ) -> None:
        if output_type is None and output_hints is None:
            super().__init__(str(output_idx))  # a ready message (rebuilt across a worker pipe)
            return
        hints = ", ".join(f"'{hint}'" for hint in (output_hints or []))
        super().__init__(f"output {output_idx} is a {output_type}, but the return annotation allows {hints}")


class InputsNotFound(InferenceError):
    """A request carries inputs that a ``decode_args`` predict does not take (a 400)."""

    def __init__(self, inputs: Any, input_hints: Optional[Dict[str, Any]] = None) -> None:
        if isinstance(inputs, str):
            super().__init__(inputs)  # a ready message
            return
        names: List[str] = [f"'{getattr(i, 'name', i)}'" for i in inputs]
        expected = ", ".join(f"'{name}'" for name in (input_hints or {})) or "none"
        noun = "input" if len(names) == 1 else "inputs"
        super().__init__(f"unexpected {noun} {', '.join(names)}: the model takes the inputs {expected}")
