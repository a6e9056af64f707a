from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.run.config import ConfigError, compose, validate
from pipeline.run.paths import CONF_DIR, REPO_ROOT

STAGES = sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))


def test_defaults_compose_and_resolve_paths():
    cfg = compose([])
    assert cfg.stage.name == "stage1" and cfg.stage.kind == "sft"
    assert Path(cfg.model.path).is_absolute()
    assert cfg.logger.wandb_mode == "offline"
    assert cfg.experiment == "cpu"


def test_overrides_apply_with_types():
    cfg = compose(["stage.optim.lr=3e-5", "deepspeed=zero3", "run_name=x", "data.tasks=[chain_sum]"])
    assert cfg.stage.optim.lr == pytest.approx(3e-5) and isinstance(cfg.stage.optim.lr, float)
    assert cfg.deepspeed.zero_stage == 3
    assert list(cfg.data.tasks) == ["chain_sum"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("stage.lrr=1", "stage.lrr"),
        ("+stage.lrr=1", "stage.lrr"),
        ("stage.optim.lr=fast", "stage.optim.lr"),
        ("stage.lr=1e-5", "stage.optim.lr"),  # renamed: the error names the new key
        ("deepspeed.zero_stage=5", "deepspeed.zero_stage"),
        ("logger.wandb_mode=sometimes", "logger.wandb_mode"),
        ("+modle.path=/x", "modle"),
    ],
)
def test_bad_override_fails_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([override])


def test_unknown_group_option_lists_choices():
    with pytest.raises(ConfigError, match="smollm2"):
        compose(["model=nope"])


def test_typo_in_yaml_is_caught_by_schema():
    raw = OmegaConf.create(OmegaConf.to_container(compose([])))  # plain YAML-like tree
    raw.stage.warmup_step = 3  # typo of warmup_steps
    with pytest.raises(ConfigError, match=r"stage\.warmup_step"):
        validate(raw)


@pytest.mark.parametrize("group", ["model", "data", "stage", "deepspeed", "launcher", "logger", "experiment"])
def test_every_config_file_composes(group):
    """Build every option of every group (torchtune's "a test builds every config")."""
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert options, group
    for opt in options:
        extra = {"hf": ["model.path=/tmp/m"], "file": ["data.path=/tmp/d.jsonl"], "hub": ["data.hub_id=a/b"]}
        extra = extra.get(opt, []) if group in ("model", "data") else []
        cfg = compose([f"{group}={opt}", *extra])
        assert cfg is not None


def test_hydra_does_not_change_directory():
    text = (CONF_DIR / "config.yaml").read_text()
    assert "chdir: false" in text
    assert REPO_ROOT.exists()


def test_gpu_experiment_sets_gpu_sizes_for_every_stage():
    cfg = compose(["experiment=gpu"])
    assert cfg.launcher.accelerator == "cuda"
    assert cfg.data.num_examples >= 1000
    assert cfg.deepspeed.zero_stage == 2
    rl = compose(["stage=stage2", "experiment=gpu"]).stage
    assert rl.group_size == 16 and rl.prompts_per_step == 64 and rl.num_minibatches == 4
    assert compose(["stage=stage4", "experiment=gpu"]).stage.general_last_steps < rl.steps


@pytest.mark.parametrize("stage_file", STAGES)
def test_every_stage_field_can_be_overridden_from_the_command_line(stage_file):
    """Hydra only overrides keys the composed YAML has: each stage file must list its schema's fields."""
    import dataclasses

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.run.config import STAGE_SCHEMAS

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        raw = hydra_compose(config_name="config", overrides=[f"stage={stage_file}"])
    schema = STAGE_SCHEMAS[raw.stage.kind]
    missing = [f.name for f in dataclasses.fields(schema) if f.name not in raw.stage]
    assert not missing, f"conf/stage/{stage_file}.yaml lacks {missing}"


@pytest.mark.parametrize("experiment", ["cpu_fast", "cpu_long", "smoke", "gpu", "r1_zero"])
def test_whole_pipeline_presets_compose_for_every_stage(experiment):
    """`experiment=X` also applies conf/preset/X/<stage>.yaml, so one ARGS sizes every stage of
    `make pipeline`; a preset file with a key its stage lacks fails here."""
    files = {p.stem for p in (CONF_DIR / "preset" / experiment).glob("*.yaml")}
    assert files and files <= set(STAGES), files - set(STAGES)
    for stage in STAGES:
        assert compose([f"stage={stage}", f"experiment={experiment}"]).experiment == experiment


def test_cpu_fast_preset_sizes_each_stage_and_yields_to_the_command_line():
    assert compose(["stage=stage2"]).stage.steps == 12  # the plain CPU default is untouched
    fast = compose(["stage=stage2", "experiment=cpu_fast"]).stage
    assert fast.steps == 3 and fast.eval_every == 0
    assert (
        compose(["stage=stage1", "experiment=cpu_fast"]).data.num_examples < compose(["stage=stage1"]).data.num_examples
    )
    assert compose(["stage=eval", "experiment=cpu_fast"]).stage.samples == 0
    assert compose(["stage=stage2", "experiment=cpu_fast", "stage.steps=7"]).stage.steps == 7


def test_cpu_long_changes_only_stage2s_steps_and_folder():
    """`experiment=cpu_long` is the default stage-2 run three times longer: any other difference would
    make its gain incomparable with the default's (README, Stage 2)."""
    plain, long = (OmegaConf.to_container(compose(["stage=stage2", *extra])) for extra in ([], ["experiment=cpu_long"]))
    assert long["stage"].pop("steps") == 3 * plain["stage"].pop("steps")
    assert long["stage"].pop("name") == "stage2_long" and plain["stage"].pop("name") == "stage2"
    assert long.pop("experiment") == "cpu_long" and plain.pop("experiment") == "cpu"
    assert long == plain
    assert compose(["stage=stage1", "experiment=cpu_long"]).stage == compose(["stage=stage1"]).stage


@pytest.mark.parametrize(
    "old, new", sorted(__import__("pipeline.run.config", fromlist=["RENAMED_KEYS"]).RENAMED_KEYS.items())
)
def test_renamed_keys_fail_naming_the_new_key(old, new):
    with pytest.raises(ConfigError, match=f"'{old}' was renamed: use '{new}'"):
        compose([f"{old}=1"])
    raw = OmegaConf.create(OmegaConf.to_container(compose([])))  # an old YAML (a preset) spelling it the old way
    raw.stage[old.split(".")[1]] = 1
    with pytest.raises(ConfigError, match=f"use '{new}'"):
        validate(raw)


@pytest.mark.parametrize("stage_file", STAGES)
def test_stage_yaml_holds_only_what_differs_from_its_schema(stage_file):
    """One source of truth: a stage file that restates a schema default is a second copy that can drift."""
    import dataclasses

    from pipeline.run.registry import STAGE_SCHEMAS

    text = OmegaConf.load(CONF_DIR / "stage" / f"{stage_file}.yaml")
    stage = text.get("stage", text) if "stage" in text else text
    cfg = compose([f"stage={stage_file}"])
    defaults = OmegaConf.structured(STAGE_SCHEMAS[cfg.stage.kind])
    restated = [
        f.name
        for f in dataclasses.fields(STAGE_SCHEMAS[cfg.stage.kind])
        if f.name in stage and f.name not in ("catalog",) and stage[f.name] == defaults[f.name]
    ]
    assert not restated, f"conf/stage/{stage_file}.yaml restates schema defaults {restated}"


def test_a_benchmark_can_be_added_from_the_command_line_and_is_typed():
    cfg = compose(["stage=eval", "+stage.catalog.mine={path: data/mine.jsonl, question_field: problem}"])
    assert cfg.stage.catalog.mine.question_field == "problem" and cfg.stage.catalog.mine.limit == 128
    with pytest.raises(ConfigError, match=r"stage\.catalog\.bad\.pathh"):
        compose(["stage=eval", "+stage.catalog.bad={pathh: x}"])
