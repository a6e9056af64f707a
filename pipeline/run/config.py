"""Configuration: Hydra composes `conf/` on top of the typed schema (`pipeline.run.schema`).

Hydra only *composes* a stage's config (schema defaults, the stage's YAML, the experiment preset,
command-line overrides). The result is validated against the schema, so a misspelt key
(`stage.lrr=1`), a wrong type (`stage.optim.lr=fast`) or a key that was renamed (`stage.lr`, now
`stage.optim.lr`) stops the run at start-up with an error naming the key, before any process is
spawned or any file is written.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.run.paths import CONF_DIR, REPO_ROOT, base_model_dir, cache_dir
from pipeline.run.registry import STAGE_SCHEMAS
from pipeline.run.schema import BenchmarkConfig, Config, DataConfig  # noqa: F401  (DataConfig: re-exported)


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key."""


# Keys that moved; the old spelling fails with a message naming the new one.
RENAMED_KEYS = {
    f"stage.{k}": f"stage.optim.{k}"
    for k in ("lr", "min_lr_ratio", "warmup_steps", "weight_decay", "betas", "grad_clip")
}

BENCHMARK_SOURCES = ("reasoning_gym", "file", "code_file", "humaneval")
_CHOICES = {
    "model.dtype": {"auto", "fp32", "bf16"},
    "deepspeed.zero_stage": {0, 1, 2, 3},
    "launcher.kind": {"torchrun", "deepspeed", "slurm"},
    "launcher.accelerator": {"auto", "cpu", "cuda"},
    "logger.wandb_mode": {"offline", "online", "disabled"},
}
_STAGE_CHOICES = {
    "rm": {"stage.objective": {"pairwise", "pointwise"}},
    "grpo": {
        "stage.aggregation": {"seq_mean", "token_mean", "dr_grpo"},
        "stage.rollout.engine": {"vllm"},
        "stage.tis.mode": {"none", "token", "sequence"},
        "stage.rollout.sleep_level": {1, 2},
    },
    "align": {
        "stage.aggregation": {"seq_mean", "token_mean", "dr_grpo"},
        "stage.rollout.engine": {"vllm"},
        "stage.tis.mode": {"none", "token", "sequence"},
        "stage.rollout.sleep_level": {1, 2},
    },
    "rs_sft": {"stage.general.source": {"file", "hub", "none"}, "stage.rollout.engine": {"vllm"}},
}


for _kind in ("sft", "distill", "rs_sft", "rm", "grpo", "align"):  # the stages that train
    _STAGE_CHOICES.setdefault(_kind, {})["stage.optim.on_nonfinite"] = {"skip", "stop"}


def _register() -> None:
    """Resolvers used by the YAML, and the schemas Hydra composes on: `schema/stage/<kind>` is the
    first default of every `conf/stage/<name>.yaml`, `config_schema` the first of `conf/config.yaml`."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for kind, schema in STAGE_SCHEMAS.items():
        store.store(group="schema/stage", name=kind, node=schema)
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("default_cache_dir"):
        OmegaConf.register_new_resolver("default_cache_dir", lambda: str(cache_dir()))
    if not OmegaConf.has_resolver("base_model_dir"):
        OmegaConf.register_new_resolver("base_model_dir", lambda: str(base_model_dir()))


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose `conf/<config_name>.yaml` with command-line style overrides and validate it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    overrides = list(overrides or [])
    for override in overrides:
        _check_renamed(override.split("=", 1)[0].lstrip("+~"))
    _register()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            raw = hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:  # unknown group option or key, bad syntax
        raise ConfigError(f"config: {e}") from None
    raw = OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"]) if "hydra" in raw else raw
    return validate(raw)


def _check_renamed(key: str) -> None:
    if key in RENAMED_KEYS:
        raise ConfigError(f"config key '{key}' was renamed: use '{RENAMED_KEYS[key]}'")


def validate(raw: DictConfig) -> DictConfig:
    """Merge into the typed schema; unknown keys and bad types raise ConfigError naming the key."""
    _register()
    kind = OmegaConf.select(raw, "stage.kind", default="sft")
    if kind not in STAGE_SCHEMAS:
        raise ConfigError(f"config key 'stage.kind': unknown stage kind {kind!r}; known: {sorted(STAGE_SCHEMAS)}")
    schema = OmegaConf.structured(Config)
    schema.stage = OmegaConf.structured(STAGE_SCHEMAS[kind])
    try:
        # as plain data: a typed node from Hydra would let keys added with `+` through the merge
        cfg = OmegaConf.merge(schema, OmegaConf.create(OmegaConf.to_container(raw, resolve=False)))
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        _check_renamed(key)
        raise ConfigError(f"config key '{key}': {_first_line(e)}") from None
    _check_choices(cfg, {**_CHOICES, **_STAGE_CHOICES.get(kind, {})})
    _check_launcher(cfg.launcher)
    if kind in ("grpo", "align"):
        _check_rewards(cfg.stage)
        _check_rl_sampling(cfg.stage)
    if kind == "eval":
        _check_benchmarks(cfg.stage)
    if not cfg.cache_dir:
        cfg.cache_dir = str(cache_dir())
    OmegaConf.set_readonly(cfg, False)
    OmegaConf.set_struct(cfg, True)
    return cfg


def _check_launcher(launcher: DictConfig) -> None:
    """Several nodes must meet at one fixed address and port (or a rendezvous endpoint)."""
    if launcher.nnodes < 1:
        raise ConfigError(f"config key 'launcher.nnodes': {launcher.nnodes}; at least 1")
    if not 0 <= launcher.node_rank < launcher.nnodes:
        raise ConfigError(
            f"config key 'launcher.node_rank': {launcher.node_rank} is not in 0..{launcher.nnodes - 1} "
            f"(launcher.nnodes={launcher.nnodes})"
        )
    several = launcher.nnodes > 1 and launcher.kind != "slurm"  # slurm fills the port in its script
    if several and not launcher.rdzv_endpoint and launcher.master_port == 0:
        raise ConfigError(
            "config key 'launcher.master_port': several nodes need the same fixed port on every node "
            "(e.g. launcher.master_port=29500), or launcher.rdzv_endpoint=<host:port>"
        )
    if launcher.kind == "deepspeed" and launcher.nnodes > 1 and not launcher.hostfile:
        raise ConfigError(
            "config key 'launcher.hostfile': launcher=deepspeed on several nodes starts them from node 0 "
            "through a hostfile (`host slots=N` lines); or use launcher=torchrun on every node"
        )


def _check_choices(cfg: DictConfig, choices: dict[str, set]) -> None:
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {sorted(allowed, key=str)}")
    if "language" in cfg.stage:
        from pipeline.rl.rewards import LANGUAGE_SCRIPTS

        if cfg.stage.language not in LANGUAGE_SCRIPTS:
            raise ConfigError(
                f"config key 'stage.language': {cfg.stage.language!r} is not supported; "
                f"known: {sorted(LANGUAGE_SCRIPTS)}"
            )


def _check_rewards(stage: DictConfig) -> None:
    from pipeline.rl.rewards import REWARDS

    for key in ("rewards", "rm_rewards"):
        unknown = sorted(set(stage.get(key, {})) - set(REWARDS))
        if unknown:
            raise ConfigError(f"config key 'stage.{key}': unknown reward(s) {unknown}; known: {sorted(REWARDS)}")
    missing = sorted(set(stage.get("rm_rewards", {})) - set(stage.get("reward_models", {})))
    if missing:
        raise ConfigError(f"config key 'stage.reward_models': no reward model for {missing}")


def _check_rl_sampling(stage: DictConfig) -> None:
    """Settings under which GRPO cannot learn or its maths would be wrong."""
    if stage.group_size < 2:
        raise ConfigError(
            f"config key 'stage.group_size': GRPO needs at least 2 samples per prompt (advantages are "
            f"relative to the group's mean), got {stage.group_size}"
        )
    if stage.rollout.temperature <= 0:
        raise ConfigError(
            "config key 'stage.rollout.temperature': RL needs sampled rollouts (T > 0); at T = 0 every "
            "sample of a group is the same and no advantage is ever non-zero"
        )
    if stage.rollout.top_p != 1.0:
        raise ConfigError(
            f"config key 'stage.rollout.top_p': {stage.rollout.top_p}; the trainer's log-probs and importance "
            "ratio are those of the untruncated distribution, and it has no matching top-p truncation, so "
            "rollouts must use top_p = 1.0"
        )


def _check_benchmarks(stage: DictConfig) -> None:
    missing = [b for b in stage.benchmarks if b not in stage.catalog]
    if missing:
        raise ConfigError(
            f"config key 'stage.benchmarks': {missing} not in stage.catalog; known: {sorted(stage.catalog)}"
        )
    for name in list(stage.catalog):
        try:
            stage.catalog[name] = OmegaConf.merge(OmegaConf.structured(BenchmarkConfig), stage.catalog[name])
        except OmegaConfBaseException as e:
            raise ConfigError(f"config key 'stage.catalog.{name}.{getattr(e, 'key', '')}': {_first_line(e)}") from None
        bench = stage.catalog[name]
        if bench.source not in BENCHMARK_SOURCES:
            raise ConfigError(
                f"config key 'stage.catalog.{name}.source': {bench.source!r} is not one of {list(BENCHMARK_SOURCES)}"
            )


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain dicts and lists (what the launcher writes to config.yaml)."""
    return OmegaConf.to_container(cfg, resolve=True)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def from_argv(argv: list[str] | None, description: str) -> DictConfig:
    """A stage module's command line, `--config <run>/<stage>/config.yaml`, as the launcher starts it."""
    import argparse

    parser = argparse.ArgumentParser(description=f"{description} (started by pipeline.run.launch)")
    parser.add_argument("--config", required=True, help="resolved config.yaml written by the launcher")
    return load(parser.parse_args(argv).config)


def load(path: str | Path) -> DictConfig:
    """Load a resolved `config.yaml` written by the launcher (already validated there)."""
    return validate(OmegaConf.load(path))


def stage_dir(cfg: DictConfig) -> Path:
    from pipeline.run.paths import absolute

    return absolute(cfg.runs_dir) / cfg.run_name / cfg.stage.name
