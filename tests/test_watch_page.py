"""The watch page (``gradtrace watch``'s HTML): checked input, an honest CSP, and in a real browser
(Debian's Chromium through Playwright) the tree, the chart, the heat map, the events and the
embedded step traces. The history is the synthetic one of tests/watch_history.py; every value the
page shows is compared with the history it was given, and the embedded traces with the Trace."""

from __future__ import annotations

import array
import base64
import copy
import hashlib
import json
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradtrace
from gradtrace import GradtraceError, Trace
from gradtrace.render.inert import inert_text
from gradtrace.render.watch_html import WatchFileError, to_watch_html, to_watch_iframe

from .browser import chromium_page
from .test_html import ARTIFACTS, Hostile
from .test_inert import PAYLOADS
from .watch_history import as_float, build_history

@pytest.fixture(scope="module")
def history():
    return build_history()


@pytest.fixture(scope="module")
def page_file(history, tmp_path_factory):
    path = tmp_path_factory.mktemp("watch") / "run.html"
    path.write_text(to_watch_html(history), encoding="utf-8")
    return path


def open_page(page, path):
    errors, requests, dialogs = [], [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return errors, requests, dialogs


def shown_number(text: str) -> float:
    return {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}.get(text) if text in ("NaN", "inf", "-inf") else float(text)


def assert_shows(text: str, value) -> None:
    """``text`` is how the page wrote ``value`` (a history sample): the same non-finite word, or the
    number to the 4 significant digits the page shows."""
    expected = as_float(value)
    seen = shown_number(text)
    if math.isnan(expected):
        assert math.isnan(seen), (text, value)
    else:
        assert seen == pytest.approx(expected, rel=6e-4), (text, value)


def module_index(history) -> dict[str, int]:
    return {m["path"]: i for i, m in enumerate(history["modules"])}


def select_row(page, path: str) -> None:
    """Click the tree row of the module ``path`` (its tooltip is the path, then its type)."""
    page.evaluate("p => [...document.querySelectorAll('#tree .row')].find(r => r.title.startsWith(p + ' (')).click()", path)


# -- the document, without a browser -------------------------------------------------------------

def test_page_is_one_offline_file_whose_policy_allows_exactly_its_own_code(history):
    page = to_watch_html(history)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"] and directives["connect-src"] == ["'none'"]
    own_scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    own_styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(own_scripts) == 1 and len(own_styles) == 1

    def sha(text):
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert sha(own_scripts[0]) in directives["script-src"] and sha(own_styles[0]) in directives["style-src"]
    # The embedded replay pages run under this policy too (a srcdoc frame inherits it): their hashes are here.
    data = json.loads(re.search(r'id="gradtrace-watch-data">(.*?)</script>', page, re.S).group(1))
    for t in data["traces"]:
        for body in re.findall(r"<script>(.*?)</script>", t["html"], re.S):
            assert sha(body) in directives["script-src"]
        for body in re.findall(r"<style>(.*?)</style>", t["html"], re.S):
            assert sha(body) in directives["style-src"]


def page_series(x):
    """A series as the page's data holds it, back as floats (None for a missing sample)."""
    if isinstance(x, list):
        return [as_float(v) for v in x]
    values = [float(v) for v in array.array("f", base64.b64decode(x["f32"]))]
    for i in x.get("null", []):
        values[i] = None
    return values


def test_every_sample_reaches_the_page(history):
    page = to_watch_html(history)
    data = json.loads(re.search(r'id="gradtrace-watch-data">(.*?)</script>', page, re.S).group(1))
    rows = {(r["kind"], r["key"]): r["s"] for r in data["rows"]}
    for kind, series in history["series"].items():
        for key, metrics in series.items():
            got = rows[(kind, key)]
            assert set(got) == set(metrics)
            for m, values in metrics.items():
                for a, b in zip(page_series(got[m]), values, strict=True):
                    b = as_float(b)
                    assert (a is None) == (b is None)
                    if b is not None:
                        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-7)  # float32's 7 digits
    assert [m["path"] for m in history["modules"]] == [r["key"] for r in data["rows"] if r["kind"] == "module"]
    assert [as_float(v) for v in history["loss"]] == pytest.approx(page_series(data["loss"]), rel=1e-7, nan_ok=True)


def test_a_sample_float32_cannot_hold_keeps_its_digits():
    h = build_history(steps=4, traces=False, nan_at=None, skipped_at=None)
    h["series"]["module"]["head"]["grad_norm"] = [1e39, None, "inf", 2.5]
    h["series"]["module"]["head"]["out_rms"] = [None, 1e-300, 0.0, "NaN"]
    h["series"]["module"]["head"]["out_nonfinite"] = [2**24 + 1, 0, 3, 0]
    h["series"]["module"]["ln_f"]["grad_norm"] = [None, 1.0, "-inf", None]
    data = json.loads(re.search(r'id="gradtrace-watch-data">(.*?)</script>', to_watch_html(h), re.S).group(1))
    rows = {r["key"]: r["s"] for r in data["rows"] if r["kind"] == "module"}
    assert rows["head"]["grad_norm"] == [1e39, None, "inf", 2.5]
    assert rows["head"]["out_rms"] == [None, 1e-300, 0.0, "NaN"]
    assert rows["head"]["out_nonfinite"] == [2**24 + 1, 0, 3, 0]
    assert page_series(rows["ln_f"]["grad_norm"]) == [None, 1.0, -math.inf, None]


def _broken(change):
    h = build_history(steps=20, traces=False, nan_at=None, skipped_at=None)
    change(h)
    return h


@pytest.mark.parametrize("change, words", [
    (lambda h: h.update(format="gradtrace-trace"), ["format", "gradtrace-watch"]),
    (lambda h: h.update(version=2), ["version", "1"]),
    (lambda h: h.update(steps=[1, 3, 2] + h["steps"][3:]), ["steps must ascend", "steps[2]"]),
    (lambda h: h["series"]["module"]["blocks.0"]["grad_norm"].pop(), ["series.module['blocks.0']['grad_norm']", "19 samples", "20"]),
    (lambda h: h["series"]["param"]["head.weight"]["grad_norm"].__setitem__(3, "nan"), ["['grad_norm'][3]", '"NaN"', "'nan'"]),
    (lambda h: h["loss"].__setitem__(0, {"x": 1}), ["loss[0]", "a number"]),
    (lambda h: h["modules"].__setitem__(1, {"path": 5}), ["modules[1].path", "a string"]),
    (lambda h: h["events"].append({"step": "ten", "kind": "alarm", "text": ""}), ["events[", "].step", "an integer"]),
    (lambda h: h.update(traces={"12": {"format": "nope"}}), ["traces['12']", "not a step trace"]),
    (lambda h: h.update(traces={"last": {}}), ["traces key 'last'", "step number"]),
    (lambda h: h.update(series=[]), ["series", "a JSON object"]),
])
def test_a_malformed_history_is_refused_with_the_field_named(change, words):
    with pytest.raises(WatchFileError) as err:
        to_watch_html(_broken(change))
    assert isinstance(err.value, GradtraceError)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_a_history_object_is_read_through_its_to_dict(history):
    class History:
        def to_dict(self):
            return history

    assert to_watch_html(History()) == to_watch_html(history)
    with pytest.raises(WatchFileError, match="the document should be a JSON object"):
        to_watch_html([history])


def test_a_history_with_what_is_optional_left_out_renders():
    h = build_history(steps=1, traces=False, nan_at=None, skipped_at=None)
    for key in ("loss_all", "clip", "events", "traces", "overhead", "first_alarm", "lr", "optimizers", "params"):
        h.pop(key)
    assert to_watch_html(h).startswith("<!DOCTYPE html>")


def test_a_trace_that_cannot_be_drawn_names_its_step():
    h = build_history(steps=5, traces=True, nan_at=None, skipped_at=None)
    h["traces"]["1"]["edges"].append({"src": "nowhere", "dst": h["traces"]["1"]["loss"]})
    with pytest.raises(WatchFileError, match=r"traces\['1'\].*nowhere"):
        to_watch_html(h)


# -- in Chromium ---------------------------------------------------------------------------------

def test_page_opens_quietly_and_offers_every_metric(history, page_file):
    with chromium_page() as page:
        errors, requests, _ = open_page(page, page_file)
        assert errors == [] and requests == [page_file.as_uri()], "no error, and no request but the page itself"
        offered = page.eval_on_selector_all("#metric option", "os => os.map(o => o.value)")
        present = {m for series in history["series"].values() for metrics in series.values() for m in metrics}
        assert sorted(offered) == sorted(present) and offered[0] == "grad_norm"
        assert page.locator("#tree .row:not([hidden])").count() >= len(history["modules"])
        assert page.text_content("#runname") == "train.py"
        # It opens on the first alarm, with the alarm's step selected and its event highlighted.
        assert page.get_attribute("body", "data-step") == str(history["first_alarm"])
        assert page.text_content("#events li.current .badge") == "alarm"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "watch-page.png"))


def test_selecting_a_module_changes_the_chart_and_the_readout_reads_the_history(history, page_file):
    with chromium_page() as page:
        open_page(page, page_file)
        before = page.eval_on_selector("#chart", "c => c.toDataURL()")
        select_row(page, "blocks.2.attn")
        assert page.get_attribute("#chart", "data-row") == "module:blocks.2.attn"
        assert "blocks.2.attn · grad_norm" in page.text_content("#charttitle")
        assert page.eval_on_selector("#chart", "c => c.toDataURL()") != before, "the chart was redrawn with other data"
        series = history["series"]["module"]["blocks.2.attn"]["grad_norm"]
        box = page.locator("#chart").bounding_box()
        seen = set()
        for frac in (0.2, 0.45, 0.7, 0.95):
            page.mouse.move(box["x"] + box["width"] * frac, box["y"] + box["height"] / 2)
            step = int(page.get_attribute("#readout", "data-step"))
            text = page.text_content("#readout")
            assert text.startswith(f"step {step} · grad_norm = ")
            assert_shows(text.rsplit("= ", 1)[1], series[history["steps"].index(step)])
            seen.add(step)
        assert len(seen) == 4, "hovering elsewhere reads another step"
        # The side panel lists every metric of the selected module at the selected step.
        i = history["steps"].index(int(page.get_attribute("body", "data-step")))
        for m, values in history["series"]["module"]["blocks.2.attn"].items():
            assert_shows(page.text_content(f'#stepbox td[data-field="{m}"]'), values[i])
        # A parameter-only metric opens the tree down to the parameters and charts one of them.
        page.select_option("#metric", "update_ratio")
        assert page.get_attribute("#chart", "data-row").startswith("param:")
        assert page.locator("#tree .row.kind-param:not([hidden])").count() == len(history["params"])


def test_a_heat_map_click_selects_the_module_and_the_step(history, page_file):
    mods = [m["path"] for m in history["modules"]]
    n = len(history["steps"])
    with chromium_page() as page:
        open_page(page, page_file)
        assert int(page.get_attribute("#heat", "data-rows")) == len(mods), "one heat-map row per shown module"
        page.eval_on_selector("#heat", "e => e.scrollIntoView({block: 'center'})")
        box = page.locator("#heat").bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 900, "the whole heat map is on screen"
        row_h = box["height"] / len(mods)
        for k, j in ((mods.index("blocks.4.mlp.fc"), 100), (mods.index("blocks.3.attn.q"), 400), (0, 5)):
            page.mouse.move(box["x"] + (j + 0.5) / n * box["width"], box["y"] + (k + 0.5) * row_h)
            read = page.text_content("#heatread")
            name, step, value = read.split(" · ")
            step = int(step.removeprefix("step "))
            # A sample is under 2 pixels wide here, and the mouse lands on whole pixels: the step under it
            # is j's or a neighbour's. Its value is that step's, whichever it is.
            assert name == (mods[k] or "(model)") and abs(history["steps"].index(step) - j) <= 1, read
            assert_shows(value.removeprefix("grad_norm = "), history["series"]["module"][mods[k]]["grad_norm"][history["steps"].index(step)])
            page.mouse.click(box["x"] + (j + 0.5) / n * box["width"], box["y"] + (k + 0.5) * row_h)
            assert page.get_attribute("#chart", "data-row") == f"module:{mods[k]}"
            assert page.get_attribute("body", "data-step") == str(step)
            assert page.locator("#tree .row.selected .name").text_content() == (mods[k].rsplit(".", 1)[-1] or "(model)")


def test_an_embedded_trace_opens_and_its_script_runs(history, page_file):
    trace = Trace.from_json(json.dumps(history["traces"][str(history["first_alarm"])]))
    with chromium_page(width=1000) as page:
        errors, requests, _ = open_page(page, page_file)
        page.click(f'#traces button[data-step="{history["first_alarm"]}"]')
        frame = page.frame_locator("#traceframe")
        frame.locator("#graph .node").first.wait_for()
        frame.locator("#fit").click()  # (a graph too tall to read fitted opens at the loss: fit shows every node)
        assert frame.locator("#graph .node").count() == len(trace.nodes), "the replay page drew its graph: its script ran"
        alarms = {n.key for n in trace.nodes if any(s is not None and not s.finite for s in n.values + n.grads)}
        assert alarms and frame.locator("#graph .node.alarm").count() >= 1
        # Its view fits the frame (it sized itself after the frame had its size), and it replays.
        view = frame.locator("#graph").get_attribute("viewBox").split()
        assert float(view[2]) > 0 and float(view[3]) > 0
        frame.locator("#next").click()
        assert frame.locator("#graph .node.visited").count() == 1
        page.click("#traceclose")
        assert page.locator("#tracepane").is_hidden()
        # Opened from the step's own panel too; Escape closes it while the keys are the watch page's.
        page.click("#events li.kind-alarm")
        page.click("#stepbox button")
        frame.locator("#graph .node").first.wait_for()
        page.keyboard.press("Escape")
        assert page.locator("#tracepane").is_hidden()
        assert errors == [] and requests == [page_file.as_uri()]


def test_nan_inf_and_events(history, page_file):
    alarm = next(e for e in history["events"] if e["kind"] == "alarm")
    skipped = next(e for e in history["events"] if e["kind"] == "skipped")
    with chromium_page() as page:
        open_page(page, page_file)
        page.click("#events li.kind-skipped")
        assert page.get_attribute("body", "data-step") == str(skipped["step"])
        assert page.text_content('#stepbox td[data-field="grad_norm"]') == "inf"
        assert skipped["text"] in page.text_content("#stepbox")
        page.click("#events li.kind-alarm")
        assert page.get_attribute("body", "data-step") == str(alarm["step"])
        assert page.get_attribute("#chart", "data-row") == f"module:{alarm['module']}", "the event's module is selected"
        assert page.text_content('#stepbox td[data-field="loss"]') == "NaN"
        assert page.text_content('#stepbox td[data-field="grad_norm"]') == "NaN"
        assert page.text_content('#stepbox td[data-field="out_nonfinite"]') == "4096"
        assert page.text_content("#readout").endswith("grad_norm = NaN")


def test_keyboard_steps_and_searches(history, page_file):
    steps = history["steps"]
    with chromium_page() as page:
        open_page(page, page_file)
        start = steps.index(int(page.get_attribute("body", "data-step")))
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        assert page.get_attribute("body", "data-step") == str(steps[start + 2])
        page.keyboard.press("ArrowLeft")
        assert page.get_attribute("body", "data-step") == str(steps[start + 1])
        page.keyboard.press("/")
        assert page.evaluate("document.activeElement.id") == "search"
        page.keyboard.type("blocks.5.mlp.fc")
        shown = page.eval_on_selector_all("#tree .row:not([hidden])", "rs => rs.map(r => r.title)")
        assert shown and all("blocks.5.mlp.fc" in t for t in shown)
        assert int(page.get_attribute("#heat", "data-rows")) == len(shown), "the heat map follows the filtered tree"
        page.keyboard.press("Enter")
        assert page.get_attribute("#chart", "data-row") == "module:blocks.5.mlp.fc"
        page.keyboard.press("Escape")
        assert page.locator("#tree .row:not([hidden])").count() >= len(history["modules"])
        page.keyboard.press("ArrowRight")  # the search box let go of the keys
        assert page.get_attribute("body", "data-step") == str(steps[start + 2])
        # ↑/↓ walk the tree's shown rows: blocks.5.mlp.fc's parameters are folded, so below it is mlp.act.
        page.keyboard.press("ArrowDown")
        assert page.get_attribute("#chart", "data-row") == "module:blocks.5.mlp.act"
        page.keyboard.press("ArrowUp")
        page.keyboard.press("ArrowUp")
        assert page.get_attribute("#chart", "data-row") == "module:blocks.5.mlp"


def test_dark_and_light_themes(page_file):
    with chromium_page() as page:
        open_page(page, page_file)
        first = page.evaluate("getComputedStyle(document.body).backgroundColor")
        theme = page.get_attribute("html", "data-theme")
        page.click("#theme")
        assert page.get_attribute("html", "data-theme") == ("light" if theme == "dark" else "dark")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != first
        page.click("#events li.kind-skipped")
        page.screenshot(path=str(ARTIFACTS / "watch-page-dark.png"))


def test_hostile_strings_are_inert_text(tmp_path):
    torch.manual_seed(0)
    names = {"blocks": "".join(PAYLOADS[:14]), "attn": "".join(PAYLOADS[14:32]), "Block": "".join(PAYLOADS[32:])}
    text = "".join(PAYLOADS)
    h = build_history(steps=30, nan_at=20, skipped_at=5, traces=False, names=names, script=text, event_text=text)
    # Keys other fields refer to, and names shown beside them: a metric, a clip series, an lr group, an
    # event's module, an optimizer.
    metric = "\u202e<img src=x onerror=alert(3)>" + text
    h["series"]["module"][""][metric] = [1.0] * 30
    h["clip"][PAYLOADS[2]] = [2.0] * 30
    h["lr"][text] = [0.1] * 30
    h["events"][0]["module"] = text
    h["optimizers"][0]["type"] = text
    # A second optimizer named by a payload, stepping a model named by all of them: the loss legend, the header.
    h["optimizers"][0]["roots"] = [text]
    h["optimizers"].append({"name": PAYLOADS[5], "type": "Adam", "params": 1, "roots": [text, PAYLOADS[7]]})
    h["losses"] = {"opt0": h["loss"], PAYLOADS[5]: [0.5] * 30}
    h["losses_all"] = {"opt0": [[s, 1.0] for s in h["steps"]], PAYLOADS[5]: [[s, 0.5] for s in h["steps"]]}
    hostile = gradtrace.trace(Hostile(), torch.randn(3, 4), loss=lambda out: out.sum())
    h["traces"] = {"20": hostile.to_dict()}
    path = tmp_path / "hostile.html"
    path.write_text(to_watch_html(h), encoding="utf-8")
    with chromium_page() as page:
        errors, requests, dialogs = open_page(page, path)
        page.click("#traces button")
        page.frame_locator("#traceframe").locator("#graph .node").first.wait_for()
        page.wait_for_timeout(200)
        assert dialogs == [] and errors == [] and requests == [path.as_uri()]
        assert page.locator("img, iframe:not(#traceframe), link, object, embed").count() == 0
        assert page.locator("script").count() == 2, "no script element was injected"
        assert page.frame_locator("#traceframe").locator("script").count() == 2
        assert page.text_content("#runname") == inert_text(text)
        names_shown = page.eval_on_selector_all("#tree .row .name", "ns => ns.map(n => n.textContent)")
        assert inert_text(names["blocks"]) in names_shown
        assert any(inert_text(names["Block"]) == t for t in page.eval_on_selector_all("#tree .row .type", "ns => ns.map(n => n.textContent)"))
        assert inert_text(f"loss is NaN; first non-finite gradient in softmax{text}") in page.text_content("#events")
        assert inert_text(text) in page.text_content("#events li:first-child .evtext")
        assert inert_text(metric) in page.eval_on_selector_all("#metric option", "os => os.map(o => o.textContent)")
        page.select_option("#metric", metric)
        assert page.text_content("#charttitle").startswith("(model) · " + inert_text(metric))
        assert inert_text(PAYLOADS[2]) in page.text_content("#cliplegend") and inert_text(text) in page.text_content("#lrlegend")
        assert inert_text(text) in page.text_content("#runinfo")
        legend = page.text_content("#losslegend")
        assert inert_text(PAYLOADS[5]) in legend and inert_text(text) in legend and inert_text(PAYLOADS[7]) in legend
        page.select_option("#metric", "grad_norm")
        titles = page.eval_on_selector_all("#heatlabels .hl", "ls => ls.map(l => l.title)")
        assert any(inert_text(names["blocks"]) in t for t in titles), titles[:5]
        shown = page.evaluate("document.body.innerText")
        assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", shown), \
            "no control, separator or bidi character reaches the page as such"
        page.wait_for_timeout(100)
        assert dialogs == [] and errors == []


def test_the_jupyter_iframe_holds_the_whole_page(history, tmp_path):
    h = copy.deepcopy(history)
    doc = to_watch_iframe(h, height=600)
    assert doc.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in doc and "height: 600px" in doc
    host = tmp_path / "notebook.html"
    host.write_text(f"<!DOCTYPE html><html><body style='margin:0;width:900px'>{doc}</body></html>", encoding="utf-8")
    with chromium_page(width=920, height=700) as page:
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(host.as_uri())
        frame = page.frame_locator("iframe")
        frame.locator("body[data-ready='1']").wait_for()
        # Everything is inside the 900 × 600 frame: the three columns, and the chart is wider than its minimum.
        width = frame.locator("#chart").evaluate("c => c.clientWidth")
        assert 250 < width < 900
        assert frame.locator("#side").evaluate("e => e.getBoundingClientRect().right") <= 902
        frame.locator(f'#traces button[data-step="{history["first_alarm"]}"]').click()
        frame.frame_locator("#traceframe").locator("#graph .node").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "watch-page-iframe.png"))
        assert errors == []


def test_events_and_traces_between_samples_belong_to_the_next_sample(tmp_path):
    h = build_history(steps=30, every=10, nan_at=None, skipped_at=None)  # samples 1, 11, 21, ...
    h["events"].append({"step": 35, "kind": "warning", "module": "blocks.1.mlp", "param": None, "text": "between samples"})
    h["traces"]["35"] = h["traces"].pop("1")
    path = tmp_path / "every10.html"
    path.write_text(to_watch_html(h), encoding="utf-8")
    with chromium_page() as page:
        errors, _, _ = open_page(page, path)
        page.click('#events li[data-step="35"]')
        assert page.get_attribute("body", "data-step") == "41"
        assert page.get_attribute("#chart", "data-row") == "module:blocks.1.mlp"
        assert "at step 35, warning: between samples" in page.text_content("#stepbox")
        page.click('#stepbox button[data-step="35"]')
        page.frame_locator("#traceframe").locator("#graph .node").first.wait_for()
        page.keyboard.press("Escape")
        page.keyboard.press("ArrowLeft")
        assert page.get_attribute("body", "data-step") == "31" and "between samples" not in page.text_content("#stepbox")
        assert errors == []


def test_a_history_with_no_samples_opens(tmp_path):
    h = {"format": "gradtrace-watch", "version": 1, "script": "<python>", "every": 10, "steps_run": 0, "steps": [],
         "loss": [], "lr": {}, "optimizers": [], "modules": [{"path": "", "type": "Net", "parent": None, "depth": 0}],
         "params": [], "series": {"module": {}, "param": {}}, "events": [], "first_alarm": None, "traces": {}}
    path = tmp_path / "empty.html"
    path.write_text(to_watch_html(h), encoding="utf-8")
    with chromium_page() as page:
        errors, _, _ = open_page(page, path)
        page.keyboard.press("ArrowRight")
        assert errors == []
        assert page.text_content("#stepbox") == "no sampled steps"
        assert page.locator("#metric option").count() == 0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**60) | st.floats(allow_nan=True) | st.sampled_from(["NaN", "inf", "", "x", "-1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["path", "step", "f32", "", "type"]), inner, max_size=3),
    max_leaves=6)


def _paths(x, prefix=()):
    """Every place in a JSON document (dict keys and list indices), the document itself first."""
    yield prefix
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in list(items)[:6]:  # a few entries of each list are enough to reach every field's kind
        yield from _paths(v, (*prefix, k))


SMALL = build_history(steps=3, layers=1, nan_at=3, skipped_at=2, traces=False)
PLACES = [p for p in _paths(SMALL) if p]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PLACES), JSON_VALUES), min_size=1, max_size=3))
def test_any_edit_of_a_history_renders_or_is_refused_by_name(edits):
    h = copy.deepcopy(SMALL)
    for place, value in edits:
        target = h
        try:
            for k in place[:-1]:
                target = target[k]
            target[place[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed this place
    try:
        page = to_watch_html(h)
    except WatchFileError as e:
        assert str(e).startswith("watch history: ")
    else:
        assert page.startswith("<!DOCTYPE html>") and page.count("<script") == 2


def test_every_canvas_is_drawn_at_its_own_width(page_file, tmp_path):
    """A canvas drawn at one width and shown at another is stretched by the browser (blurred, text
    squashed): after the page settles, and after the window is resized, each is drawn at its width."""
    h = build_history(steps=8, every=125, layers=1, nan_at=None, skipped_at=None)
    del h["clip"]  # a script that does not clip: the small charts share the row between two
    small = tmp_path / "small.html"
    small.write_text(to_watch_html(h), encoding="utf-8")

    def mismatched(page):
        page.wait_for_timeout(150)  # the redraw waits for an animation frame
        return page.eval_on_selector_all("canvas", "cs => cs.filter(c => c.offsetParent !== null)"
                                         ".map(c => [c.id || c.className, c.clientWidth, Number(c.dataset.drawnWidth)])"
                                         ".filter(([_, w, d]) => Math.max(10, w) !== d)")

    with chromium_page(width=1400, height=900) as page:
        for path in (small, page_file):
            open_page(page, path)
            assert mismatched(page) == []
            page.set_viewport_size({"width": 1000, "height": 700})
            assert mismatched(page) == []
            page.set_viewport_size({"width": 1400, "height": 900})


def test_a_real_watched_run_shows_in_the_page(tmp_path):
    """The engine's own history of a healthy 100-step run (gradtrace.watch), drawn: every module in the
    tree, and the page's numbers are the history's, whose gradients the engine's tests hold to torch."""
    watch = getattr(gradtrace, "watch", None)
    if watch is None:
        pytest.skip("gradtrace.watch (the engine, branch 'watch') is not in this tree")
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.ReLU()), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with watch(model, every=5) as w:
        for _ in range(100):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    history = w.history.to_dict()
    assert len(history["steps"]) == 20
    path = tmp_path / "real.html"
    path.write_text(to_watch_html(history), encoding="utf-8")
    with chromium_page() as page:
        errors, requests, _ = open_page(page, path)
        assert errors == [] and requests == [path.as_uri()]
        titles = page.eval_on_selector_all("#tree .row.kind-module", "rs => rs.map(r => r.title)")
        assert [t.rsplit(" (", 1)[0] for t in titles] == [m["path"] for m in history["modules"]]
        select_row(page, "2.0")
        assert page.get_attribute("#chart", "data-row") == "module:2.0"
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        i = history["steps"].index(int(page.get_attribute("body", "data-step")))
        for m, values in history["series"]["module"]["2.0"].items():
            assert_shows(page.text_content(f'#stepbox td[data-field="{m}"]'), values[i])
        assert_shows(page.text_content('#stepbox td[data-field="loss"]'), history["loss"][i])


# -- axes, heat-map labels, several optimizers, the header (tryout 07, 08, 11) --------------------

def minimal_history(steps, loss, lr=None, grad=None, **extra):
    """The smallest history the page draws: one model, its grad_norm, the loss and one lr group."""
    n = len(steps)
    h = {"format": "gradtrace-watch", "version": 1, "script": "t.py", "every": 1, "steps_run": steps[-1] if steps else 0,
         "steps": steps, "loss": loss, "lr": {"opt0/group0": lr if lr is not None else [1e-3] * n},
         "optimizers": [{"name": "opt0", "type": "SGD"}], "modules": [{"path": "", "type": "Net", "parent": None, "depth": 0}],
         "params": [], "series": {"module": {"": {"grad_norm": grad if grad is not None else [1.0] * n}}, "param": {}},
         "events": [], "first_alarm": None, "traces": {}}
    h.update(extra)
    return h


def overlapping(boxes, pad=1.0):
    """The pairs of label boxes (x, y, w, h in CSS pixels) that overlap or come within ``pad`` of each other."""
    bad = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a["x"] < b["x"] + b["w"] + pad and b["x"] < a["x"] + a["w"] + pad and \
                    a["y"] < b["y"] + b["h"] + pad and b["y"] < a["y"] + a["h"] + pad:
                bad.append((a["text"], b["text"]))
    return bad


AXIS_CASES = {
    # name: (steps, values): the loss, the lr and the grad norm all take the values (log where they fit, lr linear)
    "narrow log 0.080 -> 0.027 (tryout 11)": (list(range(1, 7)), [0.080, 0.061, 0.047, 0.038, 0.031, 0.027]),
    "wide, nine decades": (list(range(1, 41)), [10.0 ** (3 - 9 * i / 39) for i in range(40)]),
    "one value": (list(range(1, 6)), [0.5] * 5),
    "one step": ([7], [0.25]),
    "linear, negative": (list(range(1, 31)), [-3 + 5 * i / 29 for i in range(30)]),
    "linear, tiny span": (list(range(1, 11)), [1e-3 + 1e-9 * i for i in range(10)]),
    "long run, big step numbers": (list(range(1000, 200001, 1000)), [2.0 / (1 + i) for i in range(200)]),
}


@pytest.mark.parametrize("case", sorted(AXIS_CASES))
def test_tick_labels_never_overlap_on_any_chart(case, tmp_path):
    steps, values = AXIS_CASES[case]
    h = minimal_history(steps, values, lr=values, grad=values, loss_all=[[s, v] for s, v in zip(steps, values)])
    path = tmp_path / "axes.html"
    path.write_text(to_watch_html(h), encoding="utf-8")
    with chromium_page(width=1400, height=900) as page:
        for width in (1400, 820):
            page.set_viewport_size({"width": width, "height": 900})
            errors, _, _ = open_page(page, path)
            assert errors == []
            for chart in ("chart", "losschart", "lrchart"):
                boxes = json.loads(page.get_attribute(f"#{chart}", "data-ticks"))
                ys = [b for b in boxes if b["axis"] == "y"]
                xs = [b for b in boxes if b["axis"] == "x"]
                assert len(ys) >= 2 and len(xs) >= 1, (chart, boxes)
                assert overlapping(boxes) == [], (case, width, chart, overlapping(boxes))
                canvas_w, canvas_h = page.eval_on_selector(f"#{chart}", "c => [c.clientWidth, c.clientHeight]")
                assert all(b["x"] >= 0 and b["x"] + b["w"] <= canvas_w and b["y"] >= 0 and b["y"] + b["h"] <= canvas_h
                           for b in boxes), ("every label inside its canvas", chart, boxes)
                # Distinct labels, and each one the number at its place on the axis (read back from the texts).
                assert len({b["text"] for b in ys}) == len(ys) and len({b["text"] for b in xs}) == len(xs), boxes
                texts = [float(b["text"]) for b in sorted(ys, key=lambda b: -b["y"])]
                assert texts == sorted(texts), (chart, texts)


def heat_labels(page):
    """The heat map's row labels: (row index, text, tooltip, top, bottom relative to the heat map's top)."""
    return page.evaluate("""() => {
        const top = document.getElementById('heat').getBoundingClientRect().top;
        return [...document.querySelectorAll('#heatlabels .hl')].map(e => {
            const b = e.getBoundingClientRect();
            return {row: Number(e.dataset.row), text: e.textContent, title: e.title, top: b.top - top, bottom: b.bottom - top,
                    cls: e.className};
        });
    }""")


def check_heat_labels(labels, names, row_h):
    """Each label names its row (the tail of the name where it is cut, the whole name in its tooltip), sits
    on its row, and clears the others."""
    for lab in labels:
        full = names[lab["row"]]
        assert lab["title"] == full, lab
        assert lab["text"] == full or (lab["text"].startswith("…") and full.endswith(lab["text"][1:])), lab
        centre = (lab["row"] + 0.5) * row_h
        assert lab["top"] - 0.5 <= centre <= lab["bottom"] + 0.5, ("the label is on its row", lab, row_h)
    spans = sorted((lab["top"], lab["bottom"]) for lab in labels)
    assert all(b[0] >= a[1] - 0.5 for a, b in zip(spans, spans[1:])), spans


def test_heat_map_rows_are_labelled_with_their_names(history, page_file, tmp_path):
    mods = [m["path"] or "(model)" for m in history["modules"]]
    # A few rows: every one labelled. The synthetic GPT (78 rows): labels where there is room. 30 blocks
    # (366 rows of 3 px): still a label every few rows, and the hovered row's always.
    few = minimal_history([1, 2, 3], [1.0, 0.5, 0.25], modules=[
        {"path": "", "type": "Net", "parent": None, "depth": 0},
        {"path": "encoder", "type": "Enc", "parent": "", "depth": 1},
        {"path": "encoder.a_rather_long_layer_name_that_cannot_fit.proj", "type": "Linear", "parent": "encoder", "depth": 2},
        {"path": "head", "type": "Linear", "parent": "", "depth": 1}],
        series={"module": {p: {"grad_norm": [1.0, 2.0, 3.0]} for p in
                           ("", "encoder", "encoder.a_rather_long_layer_name_that_cannot_fit.proj", "head")}, "param": {}})
    few_path = tmp_path / "few.html"
    few_path.write_text(to_watch_html(few), encoding="utf-8")
    big = build_history(steps=20, layers=30, nan_at=None, skipped_at=None, traces=False)
    big_path = tmp_path / "big.html"
    big_path.write_text(to_watch_html(big), encoding="utf-8")
    with chromium_page(width=1100) as page:
        open_page(page, few_path)
        page.evaluate("() => document.querySelectorAll('#tree .row').forEach(r => r.click())")  # (opens every row)
        page.evaluate("() => [...document.querySelectorAll('#tree .tog')].forEach(t => t.textContent === '▸' && t.click())")
        names = ["(model)", "encoder", "encoder.a_rather_long_layer_name_that_cannot_fit.proj", "head"]
        assert int(page.get_attribute("#heat", "data-rows")) == 4
        labels = heat_labels(page)
        assert sorted(lab["row"] for lab in labels) == [0, 1, 2, 3], labels
        box = page.locator("#heat").bounding_box()
        check_heat_labels(labels, names, box["height"] / 4)
        assert any(lab["text"].startswith("…") for lab in labels), "the long name is cut to fit, keeping its tail"
        for path, n_rows in ((page_file, len(mods)), (big_path, len(big["modules"]))):
            open_page(page, path)
            names = [m["path"] or "(model)" for m in (history if path == page_file else big)["modules"]]
            assert int(page.get_attribute("#heat", "data-rows")) == n_rows
            box = page.locator("#heat").bounding_box()
            row_h = box["height"] / n_rows
            labels = heat_labels(page)
            check_heat_labels(labels, names, row_h)
            # Labels are 12 px tall and 1 px apart, on their rows: one every ceil(13 / row height) rows at least.
            assert len(labels) >= n_rows // math.ceil(13 / row_h) - 1, (len(labels), n_rows, "labels wherever there is room")
            for k in (1, n_rows // 2 + 1, n_rows - 2):  # rows that may fall between labels: the hovered one is shown
                page.evaluate("([k, h]) => { document.getElementById('main').scrollTop += "
                              "document.getElementById('heat').getBoundingClientRect().top + (k + 0.5) * h - 450; }", [k, row_h])
                box = page.locator("#heat").bounding_box()
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + (k + 0.5) * row_h)
                labels = heat_labels(page)
                hovered = [lab for lab in labels if "hover" in lab["cls"]]
                assert [lab["row"] for lab in hovered] == [k] and hovered[0]["title"] == names[k], (k, hovered)
                check_heat_labels(labels, names, row_h)


INTERRUPTED_SCRIPT = """
import os, signal, torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
opt = torch.optim.Adam(model.parameters(), 1e-2)
x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
for i in range(1000):
    if i == 33:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the run: 33 steps done
    opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
"""


def expected_sampling(steps):
    """What the header must say of an adaptive run's sampling: the intervals it took, read off its steps."""
    runs = []
    for a, b in zip(steps, steps[1:]):
        if runs and runs[-1][0] == b - a:
            runs[-1][1] = b
        else:
            runs.append([b - a, b])
    if len(runs) > 3:
        return f"adaptive: intervals of {min(g for g, _ in runs)} to {max(g for g, _ in runs)} steps"
    return "adaptive: " + ", then ".join(f"every {g}" + (f" to step {end}" if k < len(runs) - 1 else "")
                                         for k, (g, end) in enumerate(runs))


def test_header_after_an_interrupted_adaptive_run_says_what_was_sampled(tmp_path):
    """Tryout 07: Ctrl-C under the default (adaptive) sampling wrote '24 sampled steps of 33 (every 1)': the
    period the sampling had reached at the end, not what it did. The header says how many of the steps that ran
    were sampled and the intervals it took; every step that ran is in the loss chart, with torch's loss."""
    import subprocess
    import sys

    script = tmp_path / "long.py"
    script.write_text(INTERRUPTED_SCRIPT, encoding="utf-8")
    out = tmp_path / "long.html"
    done = subprocess.run([sys.executable, "-m", "gradtrace", "watch", str(script), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 130 and "KeyboardInterrupt" in done.stderr, done.stderr[-2000:]
    torch.manual_seed(0)  # the same run, by torch alone
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    losses = []
    for _ in range(33):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    page_text = out.read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="gradtrace-watch-data">(.*?)</script>', page_text, re.S).group(1))
    assert data["stepsRun"] == 33 and [s for s, _ in data["lossAll"]] == list(range(1, 34)), "every step that ran"
    assert [v for _, v in data["lossAll"]] == pytest.approx(losses, rel=1e-5)
    steps = data["steps"]
    assert steps[0] == 1 and len(steps) >= 2
    with chromium_page() as page:
        errors, _, _ = open_page(page, out)
        assert errors == []
        info = page.text_content("#runinfo")
        assert info.startswith(f"{len(steps)} of 33 steps sampled ({expected_sampling(steps)})"), (info, steps)
        assert "adaptive" in page.get_attribute("#runinfo", "title")
        # the page itself says the run was cut short, where the reader looks (not only the terminal)
        assert "long.py was interrupted (Ctrl-C) after step 33: the history ends there" in page.text_content("#events")
    assert any(e["kind"] == "warning" and e["step"] == 33 and "interrupted" in e["text"] for e in data["events"])


def test_two_optimizers_each_have_a_named_loss_line_and_distinct_model_names(tmp_path):
    """Tryout 08: a GAN (D steps, then G steps) showed only D's loss, labelled 'loss', and named D's parameters
    '0.weight' beside G's 'Sequential.0.weight'. Now: a loss line per optimizer, labelled with the optimizer and
    the model it steps, equal to torch's losses; both models named by class, numbered in call order."""
    import csv
    import io

    import torch.nn.functional as F
    from torch import nn

    def gan():
        torch.manual_seed(0)
        G = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
        D = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        return G, D, torch.optim.Adam(G.parameters(), 1e-2), torch.optim.SGD(D.parameters(), 0.05)

    def iteration(G, D, og, od, d_losses, g_losses):
        od.zero_grad()
        real, z = torch.randn(16, 2) + 2, torch.randn(16, 2)
        d_loss = F.softplus(-D(real)).mean() + F.softplus(D(G(z).detach())).mean()
        d_loss.backward()
        od.step()
        og.zero_grad()
        g_loss = F.softplus(-D(G(z))).mean()
        g_loss.backward()
        og.step()
        d_losses.append(d_loss.item())
        g_losses.append(g_loss.item())

    G, D, og, od = gan()
    torch_d, torch_g = [], []
    for _ in range(12):
        iteration(G, D, og, od, torch_d, torch_g)
    G, D, og, od = gan()
    seen_d, seen_g = [], []
    with gradtrace.watch(every=3) as w:  # (no model given: the models name themselves as they are called, D first)
        for _ in range(12):
            iteration(G, D, og, od, seen_d, seen_g)
    d = w.history.to_dict()
    assert [o["roots"] for o in d["optimizers"]] == [["Sequential"], ["Sequential2"]], d["optimizers"]
    assert sorted(d["series"]["param"]) == sorted([f"Sequential.{n}" for n, _ in D.named_parameters()]
                                                  + [f"Sequential2.{n}" for n, _ in G.named_parameters()])
    assert {m["path"] for m in d["modules"]} >= {"Sequential", "Sequential.0", "Sequential2", "Sequential2.2"}
    assert [v for _, v in d["losses_all"]["opt0"]] == pytest.approx(torch_d, rel=1e-5)
    assert [v for _, v in d["losses_all"]["opt1"]] == pytest.approx(torch_g, rel=1e-5)
    i = d["steps"]
    assert d["losses"]["opt1"] == pytest.approx([torch_g[s - 1] for s in i], rel=1e-5)
    rows = list(csv.DictReader(io.StringIO(w.history.to_csv())))
    g_csv = [float(r["value"]) for r in rows if r["series"] == "run" and r["name"] == "opt1" and r["metric"] == "loss"]
    assert g_csv == pytest.approx([torch_g[s - 1] for s in i], rel=1e-5), "CSV as the JSON"
    path = tmp_path / "gan.html"
    path.write_text(to_watch_html(d), encoding="utf-8")
    with chromium_page() as page:
        errors, _, _ = open_page(page, path)
        assert errors == []
        legend = page.eval_on_selector_all("#losslegend span", "ss => ss.map(s => s.textContent)")
        assert legend == ["— opt0 SGD → Sequential", "— opt1 Adam → Sequential2"], legend
        assert json.loads(page.get_attribute("#losschart", "data-series")) == ["opt0", "opt1"]
        assert "opt0 SGD → Sequential, opt1 Adam → Sequential2" in page.text_content("#runinfo")
        for k, step in enumerate(i):  # the step panel: each optimizer's loss at each sampled step, torch's
            if k:
                page.keyboard.press("ArrowRight")
            assert page.get_attribute("body", "data-step") == str(step)
            assert_shows(page.text_content('#stepbox td[data-field="loss:opt0"]'), torch_d[step - 1])
            assert_shows(page.text_content('#stepbox td[data-field="loss:opt1"]'), torch_g[step - 1])
