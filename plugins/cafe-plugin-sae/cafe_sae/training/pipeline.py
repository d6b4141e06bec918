"""From a training spec to a trained SAE: collect the activations, train, save; resumable at every stage."""

from __future__ import annotations

import gc
import pathlib
import sys
from dataclasses import dataclass
from typing import Any

from .activations import collect_activations
from .files import write_json
from .spec import TrainingSpec, prepare_training
from .trainer import train_sae

__all__ = ["TrainingResult", "train_from_spec"]


@dataclass
class TrainingResult:
    """What :func:`train_from_spec` produced.

    Attributes
    ----------
    out_dir : pathlib.Path
        The output folder.
    sae_path : pathlib.Path
        The trained SAE (``sae.safetensors``), loadable with :func:`cafe_sae.load` or the ``file`` SAE.
    metrics_path : pathlib.Path
        The metrics log (``metrics.jsonl``).
    activations_dir, checkpoint_dir : pathlib.Path
        The activation shards and the training checkpoints.
    metrics : dict
        Final held-out metrics and training settings (as in the SAE's ``extra["training"]``).
    """

    out_dir: pathlib.Path
    sae_path: pathlib.Path
    metrics_path: pathlib.Path
    activations_dir: pathlib.Path
    checkpoint_dir: pathlib.Path
    metrics: dict[str, Any]

    def format_summary(self) -> str:
        """A few lines for the terminal: held-out FVE, L0, dead latents, and where the SAE is."""
        m = self.metrics
        return "\n".join(
            [
                f"trained {m['architecture']} SAE with {m['d_sae']} latents for {m['steps']} steps "
                f"({m['tokens_seen']} tokens)",
                f"held-out tokens      {m['tokens']}",
                f"variance explained   {m['fve']:.4f}",
                f"mean L0              {m['l0']:.2f}",
                f"dead latents         {m['dead_latents']} ({100 * m['dead_fraction']:.1f}%)",
                f"SAE                  {self.sae_path}",
            ]
        )


def train_from_spec(
    spec: TrainingSpec | dict[str, Any] | str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    host: Any = None,
    progress: bool | None = None,
) -> TrainingResult:
    """Train the SAE a training spec describes; calling it again on the same folder resumes.

    ``out_dir`` receives ``activations/`` (the shards and their manifest), ``checkpoints/``,
    ``sae.safetensors``, ``metrics.jsonl`` and ``spec.json``. Collection continues after its last complete
    shard and training from its last checkpoint, so an interrupted run loses little work and ends with the
    weights an uninterrupted one would have had.

    Parameters
    ----------
    spec : TrainingSpec, dict or path to a TOML file
        The training spec (see :mod:`cafe_sae.training.spec`).
    out_dir : path
        The output folder (created).
    host : PluginHost, optional
        The plugins resolving ``[backbone]`` and ``[data]``; defaults to every installed plugin.
    progress : bool, optional
        Show progress bars; defaults to whether stderr is a terminal.

    Returns
    -------
    TrainingResult

    Raises
    ------
    SpecError
        Every problem of the spec at once, before anything runs.
    ActivationStoreError, TrainingError
        If ``out_dir`` holds activations or checkpoints of another spec.
    """
    plan = prepare_training(spec, host)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "spec.json", plan.spec.canonical())
    sae, training = plan.spec.sae, plan.spec.training
    activations_dir = out / "activations"
    collect_activations(
        plan.backbone,
        plan.dataset,
        sae.layer,
        sae.tokens,
        activations_dir,
        batch_size=training.image_batch_size,
        device=plan.device,
        shard_tokens=training.shard_tokens,
        limit=training.limit,
        progress=show,
        source={**plan.source, "limit": training.limit, "seed": training.seed},
    )
    plan.backbone = plan.dataset = None  # the backbone's memory is the SAE's from here on
    gc.collect()
    checkpoint_dir = out / "checkpoints"
    result = train_sae(
        activations_dir,
        architecture=sae.architecture,
        d_sae=plan.d_sae,
        l1_coefficient=sae.l1_coefficient,
        k=sae.k,
        lr=training.lr,
        steps=training.steps,
        epochs=training.epochs,
        batch_size=training.batch_size,
        seed=training.seed,
        l1_warmup_steps=training.l1_warmup_steps,
        bias_init=training.bias_init,
        eval_tokens=training.eval_tokens,
        eval_every=training.eval_every,
        log_every=training.log_every,
        shards_in_memory=training.shards_in_memory,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=training.checkpoint_every,
        save_to=out / "sae.safetensors",
        metrics_path=out / "metrics.jsonl",
        extra={"backbone": plan.source.get("backbone"), "dataset": plan.source.get("dataset")},
        progress=show,
        device=plan.device,
    )
    return TrainingResult(
        out_dir=out,
        sae_path=result.sae_path,
        metrics_path=result.metrics_path,
        activations_dir=activations_dir,
        checkpoint_dir=checkpoint_dir,
        metrics=result.metrics,
    )
