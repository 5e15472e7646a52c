import pytest

import sample_handlers
from troupe_runtime.handler import HandlerLoadError, load_handler


def test_function() -> None:
    h = load_handler("sample_handlers.echo")
    assert h.func({"x": 1}) == {"x": 1}
    assert h.kind == "function"


def test_dotted_module_path() -> None:
    h = load_handler("troupe_runtime.frames.advance_route")
    assert h.func({"prev": [], "curr": "a", "next": ["b"]})["curr"] == "b"


def test_class_method_is_built_once() -> None:
    before = sample_handlers.BUILDS
    h = load_handler("sample_handlers.Counted.handle")
    assert sample_handlers.BUILDS == before + 1
    for _ in range(3):
        assert h.func(None) == {"builds": before + 1}
    assert sample_handlers.BUILDS == before + 1


def test_kinds() -> None:
    assert load_handler("sample_handlers.async_echo").kind == "coroutine"
    assert load_handler("sample_handlers.Counted.handle_async").kind == "coroutine"
    assert load_handler("handlers.fan_out").kind == "generator"


def test_default_arguments_are_fine() -> None:
    assert load_handler("sample_handlers.with_default").func(5) == 5


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "not of the form"),
        ("justaname", "not of the form"),
        ("bad-name.f", "not of the form"),
        ("a..b", "not of the form"),
        ("troupe_no_such_module.f", "no module named 'troupe_no_such_module'"),
        ("troupe_no_such.module.C.f", "no module named"),
        ("sample_handlers.missing", "has no attribute 'missing'"),
        ("sample_handlers.Counted.missing", "has no attribute 'missing'"),
        ("sample_handlers.Counted", "names a class"),
        ("sample_handlers.NOT_CALLABLE", "not callable"),
        ("sample_handlers.echo.method", "is not a class"),
        ("sample_handlers.NeedsArgs.handle", "building NeedsArgs() with no arguments failed"),
        ("sample_handlers.FailsToBuild.handle", "no GPU here"),
        ("sample_handlers.no_args", "exactly one positional argument"),
        ("sample_handlers.two_args", "exactly one positional argument"),
        ("sample_import_error.handle", "troupe_no_such_dependency"),
        ("sample_import_raises.handle", "configuration file missing"),
    ],
)
def test_bad_specs(spec: str, fragment: str) -> None:
    with pytest.raises(HandlerLoadError) as err:
        load_handler(spec)
    assert fragment in str(err.value)
