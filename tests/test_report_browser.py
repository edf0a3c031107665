"""reports/errors.html in a real headless browser (Chromium): it renders, and the gold and
predicted columns are laid out side by side with every entity mark visible.

Needs a Chromium binary (Debian/Ubuntu: ``apt-get install chromium-headless-shell``, or
``chromium``; another path via ``TOKNER_CHROMIUM``); skipped without one. By hand:

    chromium-headless-shell --no-sandbox --screenshot=errors.png --window-size=1280,2000 \\
        file://$PWD/reports/errors.html
"""
import json
import os
import re
import shutil
import subprocess

import pytest
import spacy
from spacy.tokens import DocBin

from tokner.cli import main

from test_report import ruler_model  # noqa: F401  (fixture)

BROWSER = os.environ.get("TOKNER_CHROMIUM") or next(
    (b for b in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)

PROBE = """<script>
window.addEventListener('load', () => {
  const tables = Array.from(document.querySelectorAll('table')).map(t => {
    const heads = Array.from(t.rows[0].cells).map(c => c.textContent.trim());
    const cells = Array.from(t.rows[1].cells).map(c => {
      const r = c.getBoundingClientRect();
      const marks = Array.from(c.querySelectorAll('mark'));
      const visible = marks.filter(m => { const b = m.getBoundingClientRect();
        return b.width > 0 && b.height > 0 && b.left >= r.left - 1 && b.right <= r.right + 1; }).length;
      return {left: r.left, width: r.width, height: r.height, marks: marks.length, visible: visible};
    });
    return {heads: heads, cells: cells};
  });
  document.body.setAttribute('data-layout', JSON.stringify({width: window.innerWidth, tables: tables}));
});
</script>"""


@pytest.mark.skipif(BROWSER is None, reason="no Chromium (apt-get install chromium-headless-shell)")
def test_errors_page_renders_gold_and_predictions_side_by_side(ruler_model, tmp_path):  # noqa: F811
    d = ruler_model
    assert main(["evaluate", str(d / "model"), str(d / "dev.spacy"), "--output", str(d / "m.json"),
                 "--save-docs", str(d / "pred.spacy")]) == 0
    assert main(["compare", str(d / "reports"), "--metrics", f"ruler={d / 'm.json'}", "--docs",
                 f"ruler={d / 'pred.spacy'}", f"again={d / 'pred.spacy'}", "--gold", str(d / "dev.spacy"),
                 "--n-docs", "3"]) == 0
    page = (d / "reports" / "errors.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'data-layout="([^"]*)"', proc.stdout)
    assert m, "the page did not finish loading in the browser:\n" + proc.stdout[:500]
    layout = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    gold = list(DocBin().from_disk(d / "dev.spacy").get_docs(spacy.blank("en").vocab))[:3]
    assert len(layout["tables"]) == 3
    for doc, table in zip(gold, layout["tables"]):
        assert table["heads"] == ["gold", "ruler", "again"]
        cells = table["cells"]
        # three columns side by side inside the window, each wide and tall enough to read
        assert [c["left"] for c in cells] == sorted(c["left"] for c in cells)
        assert all(c["width"] > 200 and c["height"] > 40 for c in cells), cells
        assert cells[-1]["left"] + cells[-1]["width"] <= layout["width"] + 1
        # every gold entity is a visible mark in the gold column; predictions in theirs
        assert cells[0]["marks"] == cells[0]["visible"] == len(doc.ents) > 0
        assert cells[1]["marks"] == cells[1]["visible"] == cells[2]["marks"] > 0
