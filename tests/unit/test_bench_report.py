"""bench/report.py: the one place a benchmark's Markdown goes into bench/RESULTS.md, and its figures."""

from __future__ import annotations

import json

from bench.report import number, publish, save_raw, verdict, write_section

B, E = "<!-- x:begin -->", "<!-- x:end -->"


def test_a_section_replaces_its_own_and_keeps_the_rest(tmp_path):
    path = tmp_path / "R.md"
    path.write_text(f"# R\n\nintro\n\n{B}\nold\n{E}\n\n<!-- y:begin -->\ny\n<!-- y:end -->\n\n## Analysis\nkept\n")
    write_section(f"{B}\nnew\n{E}", path, B, E)
    text = path.read_text()
    assert f"{B}\nnew\n{E}" in text and "old" not in text
    assert "intro" in text and "\ny\n" in text and text.endswith("## Analysis\nkept\n")


def test_a_new_section_goes_before_the_analysis_or_at_the_end(tmp_path):
    path = tmp_path / "R.md"
    path.write_text("# R\n\nother\n\n## Analysis\nby hand\n")
    write_section(f"{B}\nnew\n{E}", path, B, E)
    text = path.read_text()
    assert text.index(B) < text.index("## Analysis") and text.endswith("by hand\n") and "other" in text
    plain = tmp_path / "P.md"
    plain.write_text("# P\n")
    write_section(f"{B}\nnew\n{E}", plain, B, E)
    assert plain.read_text() == f"# P\n\n{B}\nnew\n{E}\n"


def test_a_missing_file_gets_a_title_and_an_analysis_stub(tmp_path):
    path = tmp_path / "R.md"
    write_section(f"{B}\nnew\n{E}", path, B, E)
    assert path.read_text() == f"# Benchmark results\n\n{B}\nnew\n{E}\n\n## Analysis\n\n(to be written)\n"


def test_publish_prints_writes_only_when_asked_and_returns_0(tmp_path, capsys):
    path = tmp_path / "R.md"
    assert publish(f"{B}\nnew\n{E}", write=False, path=path, begin=B, end=E) == 0
    assert not path.exists() and "new" in capsys.readouterr().out
    publish(f"{B}\nnew\n{E}", write=True, path=path, begin=B, end=E)
    assert B in path.read_text()


def test_raw_results_are_closed_and_saved(tmp_path):
    results = {"x": 1}
    saved = save_raw(results, 0.0, tmp_path / "raw.json", "unused.json")
    data = json.loads(saved.read_text())
    assert data["x"] == 1 and data["elapsed_s"] > 0 and "loadavg_end" in data


def test_verdict_and_number():
    assert verdict(0.3, 1.0, False) == "met"
    assert verdict(1.5, 1.0, False) == "MISSED by 0.50 (50 %)"
    assert verdict(2.0, 2.7, True, by_how_much=False) == "MISSED"
    assert verdict(float("nan"), 1.0, True) == verdict(None, 1.0, True) == "not measured"
    assert (number(1.23456), number(3), number(None), number(float("nan"))) == ("1.23", "3", "–", "–")
