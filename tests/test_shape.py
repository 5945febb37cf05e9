"""The shape of the code: one declaration per option, one dependency direction, and a
real scikit-learn estimator."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules(package: str) -> dict[str, Path]:
    """Module name → file of every module under ``package`` (a top-level folder)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            # The longest known module the name refers to ("recsys.io.atomic_dir" → recsys.io).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


LIBRARY = {m: p for m, p in modules("recsys").items() if not m.startswith("recsys.cli")}
ALL = {**modules("recsys"), **modules("pipelines")}


def test_no_library_file_imports_pipelines():
    offenders = {
        m: sorted(i for i in imports_of(p, set(ALL)) if i.startswith("pipelines"))
        for m, p in LIBRARY.items()
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_importing_the_library_loads_no_pipelines_module():
    code = (
        "import importlib, sys\n"
        f"for m in {sorted(LIBRARY)!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pipelines'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_no_import_cycle():
    graph = {m: imports_of(p, set(ALL)) - {m} for m, p in ALL.items()}
    # A package imports its own modules through its __init__ only by name; an edge to a
    # parent package is not a cycle of code.
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


# -- one declaration per option --------------------------------------------------------

JOBS = {
    "generate": "pipelines.generate:GenerateConfig",
    "prepare": "pipelines.prepare:PrepareConfig",
    "train": "pipelines.train:TrainJobConfig",
    "evaluate": "pipelines.evaluate:EvaluateJobConfig",
    "recommend": "pipelines.recommend:RecommendConfig",
    "explain": "pipelines.explain:ExplainConfig",
    "compare": "pipelines.compare:CompareConfig",
    "sweep": "pipelines.sweep:SweepConfig",
}


def config_class(command: str) -> type:
    import importlib

    module, name = JOBS[command].split(":")
    return getattr(importlib.import_module(module), name)


def subparser(command: str):
    from recsys.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command]


@pytest.mark.parametrize("command", sorted(JOBS))
def test_cli_flags_and_defaults_come_from_the_declaration(command):
    from recsys.cli.common import build_config
    from recsys.options import default_of, flag_name, flat_fields, help_text, required

    cls, parser = config_class(command), subparser(command)
    flags = {s: a for a in parser._actions for s in a.option_strings}
    for name, (_, field, _) in flat_fields(cls).items():
        if not field.metadata.get("cli", True):
            assert flag_name(name) not in flags
            continue
        action = flags[flag_name(name)]
        assert action.help.replace("%%", "%") == help_text(field)
        # An optional one also takes "None" (the default meaning) on the command line.
        declared = field.metadata["choices"]
        assert action.choices in (None, declared, (*(declared or ()), None))
    # Giving only the required flags yields every declared default.
    given = []
    for name in required(cls):
        given += [flag_name(name), "x"]
    args = parser.parse_args(given)
    cfg = build_config(cls, args)
    from recsys.options import to_flat

    for name, (_, field, _) in flat_fields(cls).items():
        if name not in required(cls):
            assert to_flat(cfg)[name] == default_of(field), name


def test_help_shows_defaults_and_plain_percent(capsys):
    with pytest.raises(SystemExit):
        subparser("train").parse_args(["--help"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "--max-len MAX_LEN" in out
    assert "most recent events the model reads (default: from the data)" in flat
    assert "95% bootstrap" in out and "%%" not in out


def test_mlproject_parameters_match_the_declarations():
    import yaml

    from recsys.options import default_of, flag_name, flat_fields

    project = yaml.safe_load((ROOT / "mlflow" / "MLproject").read_text())
    for entry, spec in project["entry_points"].items():
        fields = flat_fields(config_class(entry))
        for name, param in spec["parameters"].items():
            assert name in fields, (entry, name)
            assert f"{flag_name(name)} {{{name}}}" in spec["command"], (entry, name)
            if isinstance(param, dict) and "default" in param:
                declared = default_of(fields[name][1])
                assert str(param["default"]) == str(declared), (entry, name)


# -- a real scikit-learn estimator -----------------------------------------------------


def test_recommender_parameters_are_the_fit_options():
    from recsys import Recommender
    from recsys.options import default_of, flat_fields
    from recsys.training.fit import FitConfig

    params = inspect.signature(Recommender.__init__).parameters
    declared = flat_fields(FitConfig)
    assert set(params) - {"self"} == set(declared)
    for name, (_, field, _) in declared.items():
        assert params[name].default == default_of(field), name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_clone_get_set_params_and_not_fitted():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from recsys import Recommender

    rec = Recommender(loss="ce", max_len=20)
    copy = clone(rec)
    assert copy is not rec and copy.get_params() == rec.get_params()
    assert copy.get_params()["loss"] == "ce" and copy.get_params()["max_len"] == 20
    assert copy.set_params(lr=0.01) is copy and copy.lr == 0.01 and rec.lr != 0.01
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    with pytest.raises(NotFittedError, match="not fitted"):
        copy.recommend(["1"])
    assert "Recommender" in rec._repr_html_() and "max_len=20" in repr(rec)


def test_unknown_or_bad_options_are_value_errors(tmp_path):
    from recsys import Recommender

    with pytest.raises(TypeError):
        Recommender(heads=2)
    with pytest.raises(ValueError, match=r"loss='mse'; expected one of"):
        Recommender(loss="mse").fit(tmp_path)


def test_jobs_never_import_the_command_line():
    offenders = {
        m: sorted(i for i in imports_of(p, set(ALL)) if i.startswith("recsys.cli"))
        for m, p in modules("pipelines").items()
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_option_values_are_checked_everywhere():
    from pipelines.train import TrainJobConfig
    from recsys.options import from_flat, parse_value
    from recsys.training.fit import FitConfig

    with pytest.raises(ValueError, match="expected a value, got None"):
        from_flat(TrainJobConfig, {"data": "d", "d_model": None})
    assert from_flat(TrainJobConfig, {"data": "d", "d_ff": None}).fit.sasrec.d_ff is None
    with pytest.raises(ValueError, match=r"loss='zzz'; expected one of"):
        parse_value(TrainJobConfig, "loss", "zzz")
    with pytest.raises(ValueError, match=r"model='zzz'; expected one of"):
        FitConfig(model="zzz")
    assert parse_value(TrainJobConfig, "eval_ks", "5,10") == [5, 10]
    assert subparser("train").parse_args(["--eval-ks", "5", "--eval-ks", "10,20"]).eval_ks == [
        5,
        10,
        20,
    ]


def test_recommend_takes_any_iterable_of_users(successor_model):
    rec = successor_model("most-popular")
    assert rec.recommend(iter(["1", "2"]), k=2).equals(rec.recommend(["1", "2"], k=2))
