"""The backtest report as one self-contained HTML file (inline CSS, SVG drawn by inline JS; no CDN).

The JSON document is embedded in a ``<script type="application/json">`` element (HTML-escaped), and
a small script draws three charts into SVG: decisions of the ruleset vs the baseline, decisions per
day, and per-rule matches split into fraud caught and false positives. Every chart element gets a
``data-chart`` attribute and the page sets ``<body data-rendered="true">`` when all charts are drawn,
which is what the headless-browser test checks.
"""

from __future__ import annotations

import html
import json
from typing import Any

_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#1f2933;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}.muted{color:#616e7c;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}.card{border:1px solid #d9e2ec;border-radius:6px;
padding:10px 14px;min-width:150px}.card b{display:block;font-size:20px}.card span{font-size:12px;color:#616e7c}
.pos{color:#2f8132}.neg{color:#c63737}table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e4e7eb;padding:5px 8px;text-align:right}th{cursor:pointer;background:#f5f7fa}
td:first-child,th:first-child{text-align:left}svg text{font-size:11px;fill:#3e4c59}.legend span{margin-right:14px;
font-size:12px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
"""

_JS = r"""
(function(){
const doc = JSON.parse(document.getElementById('backtest-data').textContent);
const C = {allow:'#9fb3c8', review:'#f0b429', challenge:'#e67e22', block:'#c63737', fraud:'#2f8132', fp:'#c63737',
           base:'#829ab1'};
const NS = 'http://www.w3.org/2000/svg';
function el(tag, attrs, parent, text){const e=document.createElementNS(NS,tag);
  for(const k in attrs)e.setAttribute(k,attrs[k]);
  if(text!==undefined)e.textContent=text; if(parent)parent.appendChild(e); return e;}
function svg(id, w, h){const host=document.getElementById(id);
  const s=el('svg',{width:w,height:h,viewBox:`0 0 ${w} ${h}`,
  'data-chart':id,role:'img'},host); return s;}
function fmt(x){return x===null||x===undefined?'–':(typeof
  x==='number'&&!Number.isInteger(x)?x.toFixed(4):x.toLocaleString());}

// 1. decisions: ruleset vs baseline
(function(){
  const kinds=['review','challenge','block'];
  const sets=[['proposed',doc.ruleset.overall]]; if(doc.baseline) sets.push(['baseline',doc.baseline.overall]);
  const W=560,H=220,L=60,B=30; const s=svg('chart-decisions',W,H);
  const max=Math.max(1,...sets.flatMap(([,o])=>kinds.map(k=>o[k])));
  const gw=(W-L-10)/kinds.length, bw=Math.min(60,(gw-20)/sets.length);
  kinds.forEach((k,i)=>{sets.forEach(([name,o],j)=>{const v=o[k], h=(H-B-20)*v/max, x=L+i*gw+10+j*bw, y=H-B-h;
      el('rect',{x,y,width:bw-4,height:Math.max(h,0.5),fill:j?C.base:C[k],'data-value':v},s).appendChild(
        el('title',{},null,`${name} ${k}: ${v}`)); el('text',{x:x+2,y:y-3},s,fmt(v));});
    el('text',{x:L+i*gw+10,y:H-B+16},s,k);});
  el('line',{x1:L,y1:H-B,x2:W-10,y2:H-B,stroke:'#9aa5b1'},s);
})();

// 2. per day: stacked review/challenge/block of the proposed ruleset, baseline flagged as a line
(function(){
  const d=doc.ruleset.daily, W=760,H=240,L=50,B=40; const s=svg('chart-daily',W,H); if(!d.length) return;
  const kinds=['review','challenge','block'];
  const tot=d.map(r=>kinds.reduce((a,k)=>a+r[k],0));
  const bd=doc.baseline?doc.baseline.daily.map(r=>kinds.reduce((a,k)=>a+r[k],0)):[];
  const max=Math.max(1,...tot,...bd); const bw=(W-L-10)/d.length;
  d.forEach((r,i)=>{let y=H-B; kinds.forEach(k=>{const h=(H-B-10)*r[k]/max; y-=h;
    el('rect',{x:L+i*bw,y,width:Math.max(bw-1,1),height:h,fill:C[k]},s).appendChild(el('title',{},null,
  `${r.day} ${k}: ${r[k]}`));});
    if(i%Math.ceil(d.length/10)===0) el('text',{x:L+i*bw,y:H-B+14},s,r.day.slice(5));});
  if(bd.length){const pts=bd.map((v,i)=>`${L+i*bw+bw/2},${H-B-(H-B-10)*v/max}`).join(' ');
    el('polyline',{points:pts,fill:'none',stroke:'#243b53','stroke-width':1.5,'stroke-dasharray':'4 2'},s);}
  el('text',{x:4,y:14},s,`max ${max}/day`); el('line',{x1:L,y1:H-B,x2:W-10,y2:H-B,stroke:'#9aa5b1'},s);
})();

// 3. per rule: matches split into fraud caught and false positives
(function(){
  const rules=doc.ruleset.rules, W=820, row=22, L=290, H=Math.max(60,rules.length*row+30);
  const s=svg('chart-rules',W,H);
  const max=Math.max(1,...rules.map(r=>r.matches));
  rules.forEach((r,i)=>{const y=10+i*row, wf=(W-L-120)*r.fraud_caught/max, wp=(W-L-120)*r.false_positives/max;
    el('text',{x:4,y:y+13},s,`${r.name}${r.mode==='active'?'':' ('+r.mode+')'}`);
    el('rect',{x:L,y,width:Math.max(wf,0),height:row-6,fill:C.fraud},s).appendChild(el('title',{},null,
  `fraud caught ${r.fraud_caught}`));
    el('rect',{x:L+wf,y,width:Math.max(wp,0),height:row-6,fill:C.fp,'fill-opacity':0.55},s).appendChild(
      el('title',{},null,`false positives ${r.false_positives}`));
    el('text',{x:L+wf+wp+6,y:y+13},s,`${r.matches} (precision ${fmt(r.precision)})`);});
})();

// sortable table
document.querySelectorAll('table.sortable th').forEach((th,col)=>th.addEventListener('click',()=>{
  const tb=th.closest('table').tBodies[0]; const rows=[...tb.rows]; const asc=th.dataset.asc!=='1';
  th.dataset.asc=asc?'1':'0';
  rows.sort((a,b)=>{const x=a.cells[col].dataset.v??a.cells[col].textContent,
  y=b.cells[col].dataset.v??b.cells[col].textContent;
    const nx=parseFloat(x), ny=parseFloat(y); const c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
  return asc?c:-c;});
  rows.forEach(r=>tb.appendChild(r));}));
document.body.setAttribute('data-rendered','true');
})();
"""


def _n(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 10 else f"{x:,.2f}"
    if isinstance(x, int):
        return f"{x:,}"
    return html.escape(str(x))


def _delta_cell(v: Any, good_when_up: bool) -> str:
    if not isinstance(v, (int, float)) or v == 0:
        return f"<b>{_n(v)}</b>"
    cls = "pos" if (v > 0) == good_when_up else "neg"
    sign = "+" if v > 0 else ""
    return f'<b class="{cls}">{sign}{_n(v)}</b>'


def render_html(doc: dict[str, Any]) -> str:
    """The report page for a backtest document (see :func:`rules.backtest.run_backtest`)."""
    rs = doc["ruleset"]
    o = rs["overall"]
    data = json.dumps(doc).replace("</", "<\\/").replace("<!--", "<\\u0021--")
    cards = [
        ("orders", o["orders"]), ("fraud (matured labels)", o["fraud_orders"]),
        ("would block", o["block"]), ("would review", o["review"]), ("would challenge", o["challenge"]),
        ("fraud blocked", o["blocked_fraud"]), ("blocked precision", o["blocked_precision"]),
        ("fraud caught (any action)", o["flagged_fraud"]), ("recall (any action)", o["flagged_recall"]),
        ("amount caught", o["flagged_fraud_amount"]), ("false positives", o["flagged_false_positives"]),
    ]
    card_html = "".join(f'<div class="card"><b>{_n(v)}</b><span>{html.escape(k)}</span></div>' for k, v in cards)
    delta_html = ""
    if "delta" in doc:
        d = doc["delta"]
        good_up = {"flagged_fraud": True, "blocked_fraud": True, "flagged_recall": True, "blocked_recall": True,
                   "flagged_precision": True, "blocked_precision": True, "flagged_fraud_amount": True,
                   "flagged_false_positives": False, "blocked_false_positives": False, "block": False,
                   "review": False, "challenge": False}
        items = "".join(
            f'<div class="card">{_delta_cell(d.get(k), up)}<span>{html.escape(k.replace("_", " "))}</span></div>'
            for k, up in good_up.items()
        )
        changes = []
        if d["rules_added"]:
            changes.append("added: " + ", ".join(html.escape(x) for x in d["rules_added"]))
        if d["rules_removed"]:
            changes.append("removed: " + ", ".join(html.escape(x) for x in d["rules_removed"]))
        if d["rules_changed_matches"]:
            changes.append("matches changed: " + ", ".join(
                f"{html.escape(k)} {v:+d}" for k, v in d["rules_changed_matches"].items()))
        delta_html = (f'<h2>Against the baseline ({html.escape(doc["baseline"]["version"])})</h2>'
                      f'<div class="cards">{items}</div><p class="muted">{"<br>".join(changes) or "same rules"}</p>')
    head = ("<tr><th>rule</th><th>action</th><th>mode</th><th>matches</th><th>match rate</th><th>decided</th>"
            "<th>fraud caught</th><th>amount caught</th><th>false positives</th><th>precision</th><th>recall</th>"
            "<th>errors</th><th>kill-switch would trip</th><th>engine</th></tr>")
    rows = "".join(
        "<tr>" + "".join([
            f"<td>{html.escape(r['name'])}</td>", f"<td>{r['action']}</td>", f"<td>{r['mode']}</td>",
            f'<td data-v="{r["matches"]}">{_n(r["matches"])}</td>', f"<td>{_n(r['match_rate'])}</td>",
            f'<td data-v="{r["decided"]}">{_n(r["decided"])}</td>',
            f'<td data-v="{r["fraud_caught"]}">{_n(r["fraud_caught"])}</td>',
            f'<td data-v="{r["fraud_caught_amount"]}">{_n(r["fraud_caught_amount"])}</td>',
            f'<td data-v="{r["false_positives"]}">{_n(r["false_positives"])}</td>',
            f"<td>{_n(r['precision'])}</td>", f"<td>{_n(r['recall'])}</td>", f"<td>{_n(r['errors'])}</td>",
            f"<td>{html.escape(r['kill_switch_trip'] or '–')}</td>",
            f"<td>{'vectorised' if r['vectorised'] else 'row by row'}</td>",
        ]) + "</tr>"
        for r in rs["rules"]
    )
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{k}</span>'
                     for k, c in (("review", "#f0b429"), ("challenge", "#e67e22"), ("block", "#c63737")))
    timings = ", ".join(f"{k} {v}s" for k, v in doc.get("timings_s", {}).items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Backtest {html.escape(rs['name'])} {html.escape(rs['version'])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body data-rendered="false">
<h1>Rules backtest: {html.escape(rs['name'])} <span class="muted">{html.escape(rs['version'])}</span></h1>
<div class="muted">{_n(o['orders'])} orders from {html.escape(doc['from'])} to {html.escape(doc['to'])};
labels as of {html.escape(str(doc.get('labels_as_of')))}; model {html.escape(str(doc.get('model_version') or 'none'))};
rules {html.escape(doc['rules_path'])}; {doc.get('malformed_lines', 0)} malformed input lines skipped; {timings}</div>
<div class="cards">{card_html}</div>
{delta_html}
<h2>Decisions{' (proposed vs baseline in grey)' if 'baseline' in doc else ''}</h2><div id="chart-decisions"></div>
<h2>Interventions per day</h2><div class="legend">{legend}<span>- - - baseline total</span></div>
<div id="chart-daily"></div>
<h2>Rules: matches split into fraud caught (green) and false positives (red)</h2><div id="chart-rules"></div>
<h2>Per rule</h2><table class="sortable"><thead>{head}</thead><tbody>{rows}</tbody></table>
<script type="application/json" id="backtest-data">{data}</script>
<script>{_JS}</script>
</body></html>
"""
