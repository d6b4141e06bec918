"""Hook specifications: what a cafe plugin can provide.

A plugin is a module (or any object) with functions named after these hooks, decorated with
:data:`cafe_core.hookimpl`, made discoverable through the ``cafe`` entry-point group::

    # pyproject.toml of cafe-plugin-xyz
    [project.entry-points.cafe]
    xyz = "cafe_xyz.plugin"

Every hook receives a ``register`` callable rather than returning values, so one hook can register any
number of components, and the host knows which plugin registered what::

    register(name, factory, *, params=None, aliases=(), description="")

``name``
    The name specs use (``name = "xyz"``). Unique across all plugins: a second registration of the same
    name is an error that names both plugins.
``factory``
    The component class (or any callable returning the component), or a lazy ``"module:attr"`` string.
    Prefer the string: the module, and whatever heavy library it imports, loads only when a run uses it.
``params``
    A pydantic model class declaring the constructor's keyword arguments, validated before anything is
    built (``extra="forbid"`` is applied). ``None`` means the component takes no parameters.
``aliases``
    Other names that resolve to the same component.
``description``
    One line shown by ``cafe plugins``.

The component is built as ``factory(**params)``. What each kind of component must implement is in
:mod:`cafe_core.protocols`.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT_NAME = "cafe"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[..., Any]


@hookspec
def cafe_register_backbones(register: Register) -> None:
    """Register backbones: models that map images to hidden states (token vectors), block by block.

    A backbone implements :class:`cafe_core.protocols.Backbone`: ``preprocess(images)``,
    ``forward_to(x, layer)`` running blocks ``0..layer`` only, and the token geometry (``grid_size``,
    ``patch_size``, ``prefix_tokens``).

    Example
    -------
    ::

        from pydantic import BaseModel
        from cafe_core import hookimpl

        class MyViTParams(BaseModel):
            model: str
            checkpoint: str | None = None

        @hookimpl
        def cafe_register_backbones(register):
            register("my_vit", "cafe_myvit.backbone:MyViT", params=MyViTParams,
                     description="My ViT family")
    """


@hookspec
def cafe_register_saes(register: Register) -> None:
    """Register SAE architectures and the checkpoint formats that load them.

    An SAE implements :class:`cafe_core.protocols.SAE`; ``encode_latents(h, latents)`` must touch only the
    requested rows of the encoder, since an explanation needs one latent, not the dictionary. The component
    is usually built from a checkpoint path given in its params.

    Example
    -------
    ::

        @hookimpl
        def cafe_register_saes(register):
            register("gated", "cafe_gated.sae:GatedSAE.load", params=GatedParams,
                     description="Gated SAE (safetensors)")
    """


@hookspec
def cafe_register_attributors(register: Register) -> None:
    """Register attribution methods that explain a latent as a heatmap over input patches.

    An attributor implements :class:`cafe_core.protocols.Attributor`:
    ``attribute(target, x, context) -> Attribution`` with a ``[B, gh, gw]`` heatmap, plus the capability
    flags ``needs_grad`` and ``conserves_relevance``. Method knobs are its params; batch size, device and
    seed come from ``context``. An attributor that works on some architectures only also defines
    ``check_compatible(backbone, saes) -> list[str]``, so ``cafe validate`` reports the mismatch before a run
    starts. Check it with :func:`cafe_core.testing.check_attributor`.

    Example
    -------
    ::

        class SmoothGradParams(BaseModel):
            n_samples: int = 16
            noise: float = 0.1

        @hookimpl
        def cafe_register_attributors(register):
            register("smoothgrad", "cafe_smooth.method:SmoothGrad", params=SmoothGradParams,
                     aliases=("smooth_grad",), description="Gradient averaged over noisy copies")
    """


@hookspec
def cafe_register_metrics(register: Register) -> None:
    """Register faithfulness metrics that score a heatmap against the model.

    A metric implements :class:`cafe_core.protocols.Metric`:
    ``evaluate(target, x, heatmap, context, annotations=None) -> MetricResult`` and ``higher_is_better``
    (``annotations``: each row's ``ImageItem.info``, for metrics that score against ground truth). Check it
    with :func:`cafe_core.testing.check_metric`.

    Example
    -------
    ::

        @hookimpl
        def cafe_register_metrics(register):
            register("pointing_game", "cafe_pg.metric:PointingGame", params=None,
                     description="Top patch inside the annotated mask")
    """


@hookspec
def cafe_register_datasets(register: Register) -> None:
    """Register image sources.

    A dataset implements :class:`cafe_core.protocols.Dataset`: ``len``, indexing and iteration over
    :class:`cafe_core.protocols.ImageItem` with stable ``image_id`` values (the run store keys results on
    them, which is what makes resuming possible).

    Example
    -------
    ::

        class ImageNetValParams(BaseModel):
            root: pathlib.Path
            limit: int | None = None

        @hookimpl
        def cafe_register_datasets(register):
            register("imagenet_val", "cafe_imagenet.data:ImageNetVal", params=ImageNetValParams)
    """


@hookspec
def cafe_register_executors(register: Register) -> None:
    """Register executors: how the units of work of a run are carried out (in this process, on a cluster...).

    An executor implements :class:`cafe_core.executors.Executor`: ``execute(units, work, commit)`` runs the
    work of every unit and hands every piece of its result to ``commit``, in the calling process, which is
    the only writer of the run store; it returns an :class:`~cafe_core.executors.ExecutionReport` (units
    done, retried, failed). ``work(unit)`` computes a unit in this process. To compute elsewhere, send
    ``work.spec`` and ``work.base_dir`` once to each worker, build a :class:`cafe_core.work.SpecWorker`
    there (it builds the plan, and so loads the model, once), and send each unit with ``work.stored(unit)``,
    what the store already holds for it. A spec picks an executor with ``executor = "name"`` in its
    ``[run]`` section, or a ``[run.executor]`` table holding ``name`` and the executor's params; the core
    registers ``"inprocess"``, the default. The executor is an execution setting: a run may resume under
    another one.

    Example
    -------
    ::

        class RayParams(BaseModel):
            address: str | None = None
            num_workers: int | None = Field(default=None, ge=1)

        @hookimpl
        def cafe_register_executors(register):
            register("ray", "cafe_ray.executor:RayExecutor", params=RayParams,
                     description="Units on the workers of a Ray cluster")
    """


@hookspec
def cafe_register_commands(register: Register) -> None:
    """Register subcommands of the ``cafe`` command line.

    ``factory`` is a class (or lazy ``"module:Class"``) whose instances have ``configure(parser)``, adding
    arguments to an :class:`argparse.ArgumentParser`, and ``run(args) -> int``, returning the exit status.
    The module is imported only when its command is invoked; ``description`` is the one-line help shown
    by ``cafe --help``. Raise :class:`cafe_core.errors.CafeError` for user errors: the CLI prints the
    message without a traceback.

    Example
    -------
    ::

        @hookimpl
        def cafe_register_commands(register):
            register("train-sae", "cafe_sae.training.command:TrainSAECommand",
                     description="Train an SAE on a backbone's activations")
    """


@hookspec
def cafe_register_spec_tables(register: Register) -> None:
    """Register the top-level tables of a run spec that a plugin reads (settings of its own commands).

    ``factory`` is the table's pydantic model (or lazy ``"module:Model"``), or any callable that takes the
    table and returns it checked, raising ``ValueError``. The core accepts a registered table beside its own
    sections and validates it with this model whenever it reads a spec (``cafe validate``, ``cafe run``), each
    problem reported at its path (``interlayer.points``); any other unknown table stays an error. The
    validated table is in :attr:`cafe_core.spec.RunSpec.tables`. A plugin's table is not part of the run: it
    is left out of the canonical spec, so it is not stored in a run directory and adding or editing it never
    stops a run from resuming. A table cannot take the name of a core section (``backbone``, ``run``...).

    Example
    -------
    ::

        class InterlayerSection(BaseModel):
            share: float = 0.8

        @hookimpl
        def cafe_register_spec_tables(register):
            register("interlayer", "cafe_interlayer.table:InterlayerSection",
                     description="Settings of `cafe graph` and `cafe interlayer`")
    """


@hookspec
def cafe_register_report_sections(register: Register) -> None:
    """Register sections that ``cafe report`` (cafe-plugin-report) adds to a run's report.

    ``factory`` is a callable (or lazy ``"module:function"``) taking a
    :class:`cafe_report.extension.SectionContext` (the run directory, the report folder, the folders given
    with ``cafe report --include``) and returning a :class:`cafe_report.extension.ReportSection` (anchor,
    title, HTML) or ``None`` when it has nothing to show for this run. It is called on every report, after
    the report's own sections; files it refers to go under the report folder. The core never calls it.

    Example
    -------
    ::

        @hookimpl
        def cafe_register_report_sections(register):
            register("concept_graphs", "cafe_interlayer.report_section:concept_graph_section",
                     description="The concept graphs `cafe graph` wrote into the run directory")
    """
