"""``mixer-scaling dashboard``: the W&B report, built with W&B's own report API (``wandb-workspaces``).

The report objects are the library's real ones, and nothing of the library or of W&B's client is replaced.
Saving needs the W&B servers, which tests never reach: the save path runs the real client online against a
local stand-in for W&B's GraphQL endpoint (:class:`StandInWandb`), so the test reads the report spec exactly
as it goes on the wire. What the real service does with it (storing, rendering) is not tested here.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, run_cmd
from mixer_scaling import columns
from mixer_scaling.analysis import dashboard_report as dr

wr = pytest.importorskip("wandb_workspaces.reports.v2", reason="the dashboard extra (wandb-workspaces) is not installed")

FEWSHOT = columns.summary_fewshot_key("digits", 5)


def _scatters(report) -> dict[str, tuple]:
    """title → (x, y, log_x, runset) for every scatter plot of the report."""
    out = {}
    for block in report.blocks:
        if isinstance(block, wr.PanelGrid):
            for panel in block.panels:
                if isinstance(panel, wr.ScatterPlot):
                    out[panel.title] = (panel.x, panel.y, panel.log_x, block.runsets[0])
    return out


def _find(scatters: dict, x, y) -> tuple:
    hits = [v for v in scatters.values() if v[0] == x and v[1] == y]
    assert len(hits) == 1, (x, y, list(scatters))
    return hits[0]


def test_the_report_has_the_papers_views_with_the_columns_keys():
    report = dr.build_report("me", "proj")
    assert isinstance(report, wr.Report) and (report.entity, report.project) == ("me", "proj")
    scatters = _scatters(report)
    assert len(scatters) == 4
    # names from mixer_scaling.columns: config keys are COMPARE_CONFIG's, summary keys SUMMARY_KEYS'
    assert "pretrain_flops" in columns.COMPARE_CONFIG and columns.SUMMARY_KEYS["val_top1"] == "val_top1"
    flops, train_size = wr.Config("pretrain_flops"), wr.Config("train_size")
    top1, fewshot = wr.SummaryMetric(columns.SUMMARY_KEYS["val_top1"]), wr.SummaryMetric(FEWSHOT)
    throughput = wr.SummaryMetric(columns.SUMMARY_KEYS["throughput"])
    views = {
        "top1 vs compute": (_find(scatters, flops, top1), "config.family"),
        "fewshot vs compute": (_find(scatters, flops, fewshot), "config.family"),
        "top1 vs throughput": (_find(scatters, throughput, top1), "config.family"),
        "fewshot vs data size": (_find(scatters, train_size, fewshot), "config.model_name"),
    }
    for name, ((x, y, log_x, runset), by) in views.items():
        assert log_x is True, name
        assert runset.groupby == [by], name  # coloured by family; data scaling one group per model
        assert (runset.entity, runset.project, runset.filters) == ("me", "proj", ""), name
        assert by.split(".", 1)[1] in columns.COMPARE_CONFIG
    # every axis key is a key the runs write: flat config keys, or summary keys of the record
    for x, y, _, _ in scatters.values():
        for axis in (x, y):
            if isinstance(axis, wr.Config):
                assert axis.name in columns.COMPARE_CONFIG
            else:
                assert isinstance(axis, wr.SummaryMetric)
                assert axis.name in columns.SUMMARY_KEYS.values() or columns.parse_summary_fewshot(axis.name)


def test_the_runs_table_pins_the_comparison_columns():
    report = dr.build_report("me", "proj", fewshot_dataset="synthetic_heldout", k=10)
    fewshot = columns.summary_fewshot_key("synthetic_heldout", 10)
    for runset in (b.runsets[0] for b in report.blocks if isinstance(b, wr.PanelGrid)):
        pinned = runset.pinned_columns
        for key in ("family", "model_name", "size", "fraction", "train_size", "pretrain_flops", "seed"):
            assert f"config:{key}.value" in pinned and key in columns.COMPARE_CONFIG
        for key in ("val_top1", "throughput"):
            assert f"summary:{columns.SUMMARY_KEYS[key]}" in pinned
        assert f"summary:{fewshot}" in pinned
    assert any(isinstance(v[1], wr.SummaryMetric) and v[1].name == fewshot for v in _scatters(report).values())


def test_group_filters_every_runset_to_the_study():
    from wandb_workspaces import expr

    report = dr.build_report("me", "proj", "study-a")
    runsets = [b.runsets[0] for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(runsets) == 2
    for runset in runsets:
        tree = expr.expr_to_filters(runset.filters)  # the library's own parser: run group equals the study
        assert (tree.key.section, tree.key.name, tree.op, tree.value) == ("run", "group", "=", "study-a")
    assert "study-a" in report.description


def test_dry_run_writes_the_specification_as_json(tmp_path):
    out = tmp_path / "spec" / "report.json"
    assert run_cmd(["dashboard", "me/proj", "--group", "study-a", "--title", "Mixer vs ViT",
                    "--dry-run", str(out)]) == 0
    spec = json.loads(out.read_text())
    assert (spec["entity"], spec["project"], spec["title"]) == ("me", "proj", "Mixer vs ViT")
    grids = [b for b in spec["blocks"] if "panels" in b]
    panels = [p for g in grids for p in g["panels"]]
    axes = sorted((p["x"]["name"], p["y"]["name"], p["log_x"]) for p in panels)
    assert axes == sorted([("pretrain_flops", "val_top1", True), ("pretrain_flops", FEWSHOT, True),
                           ("throughput", "val_top1", True), ("train_size", FEWSHOT, True)])
    assert [g["runsets"][0]["groupby"] for g in grids] == [["config.family"], ["config.model_name"]]
    assert all(g["runsets"][0]["filters"] == 'Group = "study-a"' for g in grids)
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temp file left


class StandInWandb:
    """A local stand-in for W&B's GraphQL endpoint (tests never reach the real servers): it answers the few
    queries ``Report.save`` makes with fixed data and keeps each request, so a test sees exactly what the real
    client put on the wire. ``refuse``: answer the report's upsert with a GraphQL error, as W&B does for a
    project the key may not write to."""

    def __init__(self, refuse: bool = False):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") != "/graphql":  # the client's own telemetry: not part of the report
                    return self._send(200, {})
                request = json.loads(body)
                outer.requests.append(request)
                self._send(200, outer.answer(request["query"], request.get("variables") or {}))

            def _send(self, status: int, payload: dict) -> None:
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.refuse = refuse
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, query: str, variables: dict) -> dict:
        if "upsertView" in query:
            if self.refuse:
                return {"data": None, "errors": [{"message": "permission denied", "path": ["upsertView"]}]}
            return {"data": {"upsertView": {"inserted": True, "view": {
                "id": "VmlldzoxMjM=", "name": "r1", "displayName": variables["displayName"],
                "description": variables["description"], "spec": variables["spec"],
                "project": {"name": variables["projectName"], "entityName": variables["entityName"]}}}}}
        if "ProjectInternalId" in query:
            return {"data": {"project": {"internalId": "UHJvamVjdDox"}}}
        if "GetProjects" in query:
            return {"data": {"models": {"edges": [{"cursor": "c", "node": {
                "id": "p1", "name": "proj", "entityName": "me", "createdAt": "2026-01-01T00:00:00",
                "isBenchmark": False, "user": None}}], "pageInfo": {"endCursor": None, "hasNextPage": False}}}}
        if "viewer" in query:
            return {"data": {"viewer": {"id": "v1", "entity": "me", "username": "me", "email": None, "flags": "{}",
                                        "teams": {"edges": []}}}}
        return {"data": {}}

    def upserts(self) -> list[dict]:
        return [r["variables"] for r in self.requests if "upsertView" in r["query"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    servers = []

    def start(**kw) -> StandInWandb:
        servers.append(StandInWandb(**kw))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _online_env(tmp_path, server: StandInWandb) -> dict:
    """Online W&B pointed at the stand-in, with a throwaway key and a home of its own (no real login used)."""
    return {"WANDB_MODE": "online", "WANDB_BASE_URL": server.url, "WANDB_API_KEY": "t" * 40,
            "HOME": str(tmp_path / "home"), "WANDB_CONFIG_DIR": str(tmp_path / "home" / ".config" / "wandb")}


def test_without_dry_run_the_report_is_saved_with_the_real_client(tmp_path, stand_in):
    """Up to the wire, and across it to a local stand-in: nothing of the library is replaced; the report W&B
    would store is the spec the real client sends (``upsertView``)."""
    server = stand_in()
    proc = run_cli(["-m", "mixer_scaling.cli", "dashboard", "me/proj", "--group", "study-a"], cwd=tmp_path,
                   env=_online_env(tmp_path, server))
    assert proc.returncode == 0, proc.stderr
    assert "saved the report: " in proc.stdout and "VmlldzoxMjM=" in proc.stdout
    (upsert,) = server.upserts()
    assert (upsert["entityName"], upsert["projectName"], upsert["type"]) == ("me", "proj", "runs")
    spec = json.loads(upsert["spec"])
    grids = [b["metadata"] for b in spec["blocks"] if b["type"] == "panel-grid"]
    assert len(grids) == 2
    panels = [(p["config"]["xAxis"], p["config"]["yAxis"], p["config"]["xAxisLogScale"])
              for g in grids for p in g["panelBankSectionConfig"]["panels"]]
    # W&B's own addressing: config:<key>.value for config keys, summary:<key> for summary keys
    flops, size = "config:pretrain_flops.value", "config:train_size.value"
    top1, fewshot, throughput = "summary:val_top1", f"summary:{FEWSHOT}", "summary:throughput"
    assert sorted(panels) == sorted([(flops, top1, True), (flops, fewshot, True), (throughput, top1, True),
                                     (size, fewshot, True)])
    runsets = [g["runSets"][0] for g in grids]
    assert [rs["grouping"] for rs in runsets] == [[{"section": "config", "name": "family.value"}],
                                                  [{"section": "config", "name": "model_name.value"}]]
    for rs in runsets:
        assert rs["project"] == {"name": "proj", "entityName": "me", "id": "UHJvamVjdDox"}
        assert [(f["key"], f["op"], f["value"]) for f in rs["filters"]["filters"]] == \
            [({"section": "run", "name": "group"}, "=", "study-a")]
        assert rs["runFeed"]["columnOrder"][:2] == ["config:family.value", "config:model_name.value"]
        assert {flops, top1, fewshot, throughput} <= set(rs["runFeed"]["columnOrder"])
    assert not list(tmp_path.glob("*.json"))  # nothing written locally


def test_a_refused_save_is_one_line_exit_2(tmp_path, stand_in):
    server = stand_in(refuse=True)
    proc = run_cli(["-m", "mixer_scaling.cli", "dashboard", "me/proj"], cwd=tmp_path, env=_online_env(tmp_path, server))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot save the report to W&B me/proj: "), lines
    assert "permission denied" in lines[0]


def test_without_the_extra_the_command_says_how_to_install_it(tmp_path):
    # wandb_workspaces made unimportable in a fresh interpreter: what a user without the extra sees
    code = ("import sys; sys.modules['wandb_workspaces'] = None; from mixer_scaling.cli import main; "
            "sys.exit(main(['dashboard', 'me/proj', '--dry-run', 'spec.json']))")
    proc = run_cli(["-c", code], cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'mixer-scaling[dashboard]'" in lines[0], lines
    assert not (tmp_path / "spec.json").exists()


@pytest.mark.parametrize("argv, parts", [
    (["meproj"], ["ENTITY/PROJECT", "'meproj'", "joined by one '/'"]),
    (["me/proj/x"], ["ENTITY/PROJECT", "'me/proj/x'", "joined by one '/'"]),
    (["/proj"], ["ENTITY/PROJECT", "'/proj'", "joined by one '/'"]),
    (["me/proj", "--group", ""], ["--group ''", "empty", "a W&B group"]),
    (["me/proj", "--group", "  "], ["--group '  '", "empty", "a W&B group"]),
    (["me/proj", "--dry-run", "{tmp}"], ["--dry-run", "it is a folder", "expected a file path"]),
    (["me/proj", "--dry-run", "{tmp}/afile/spec.json"], ["--dry-run", "afile is a file, not a folder"]),
    (["me/proj", "--k", "0", "--dry-run", "{tmp}/out/spec.json"], ["--k 0", "shots >= 1"]),
    (["me/proj", "--title", "", "--dry-run", "{tmp}/out/spec.json"], ["--title ''", "empty", "1 to 128"]),
], ids=["no-slash", "two-slashes", "no-entity", "empty-group", "blank-group", "dry-run-folder",
        "dry-run-inside-file", "k-zero", "empty-title"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, argv, parts):
    (tmp_path / "afile").write_text("x")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = run_cli(["-m", "mixer_scaling.cli", "dashboard", *argv], cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: dashboard"), lines
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
