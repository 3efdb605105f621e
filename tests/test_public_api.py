import gradtrace


def test_all_is_sorted_and_complete():
    assert gradtrace.__all__ == sorted(gradtrace.__all__)
    for name in gradtrace.__all__:
        assert getattr(gradtrace, name) is not None, name
    public = {n for n in dir(gradtrace) if not n.startswith("_")}
    modules = {"errors", "records", "render", "steptrace", "graph", "recorder", "annotations", "TYPE_CHECKING", "Any", "cli", "script", "diagnose", "collapse", "tracefile", "diff", "distributed", "watching"}
    assert public - modules <= set(gradtrace.__all__), public - modules - set(gradtrace.__all__)


def test_trace_and_capture_are_functions():
    assert callable(gradtrace.trace) and callable(gradtrace.capture)
    assert gradtrace.trace.__module__ == "gradtrace.recorder.api"
