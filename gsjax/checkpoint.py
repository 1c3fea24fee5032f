"""The one checkpoint wrapper: orbax, asynchronous, kept by count.

A checkpoint holds the trainable state (parameters and optimizer state, any pytree of arrays)
and a JSON record of everything else needed to resume exactly: the step, the data iterator's
position, RNG seeds, metrics. Restoring places arrays with the shardings of the pytree given as
the template, so a run resumes on its mesh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: Path | str, keep: int = 3, asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Start writing `state` (a pytree of arrays) and `record` (JSON) as checkpoint `step`."""
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         record=ocp.args.JsonSave(record)))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The steps held, oldest first."""
        return sorted(self._manager.all_steps())

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """(state, record) of checkpoint `step` (default: the latest), shaped and placed like
        `template`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                  record=ocp.args.JsonRestore()))
        return out.state, dict(out.record)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
