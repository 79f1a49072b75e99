"""The audit page's inline style sheet and its Content-Security-Policy (no network access:
images are inlined as ``data:`` URIs, there is no script)."""

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1180px;color:#1d232b;padding:0 16px;line-height:1.45}
h1{font-size:1.55em;margin-bottom:.2em;overflow-wrap:break-word}h2{margin-top:1.8em;
border-bottom:1px solid #dde2e8;padding-bottom:.2em;font-size:1.2em}.sub{color:#5a6572;
margin-top:0;overflow-wrap:break-word}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d5dbe2;padding:4px 9px;text-align:right}
th{background:#f2f5f8}td.l,th.l{text-align:left}td code{overflow-wrap:anywhere}
.kpi{display:flex;gap:14px;flex-wrap:wrap;margin:1em 0}
.kpi div{background:#f2f5f8;border-radius:8px;padding:10px 16px;min-width:130px}
.kpi b{display:block;font-size:1.5em}.warn{color:#a34b00}
.verdict{border-left:6px solid #d0312d;background:#fdf1f0;padding:10px 16px;
border-radius:6px;margin:1em 0}.verdict.ok{border-color:#2e7d32;background:#eff7ef}
.verdict p{margin:.35em 0}.verdict .big{font-size:1.15em;font-weight:600}
.panel{border:1px solid #d5dbe2;border-radius:8px;padding:10px 14px;margin:14px 0}
.panel h3{margin:.1em 0 .4em;font-size:1.05em}
.row{display:flex;gap:8px;align-items:flex-start;flex-wrap:wrap;margin:6px 0}
.rowlabel{width:70px;font-weight:600;padding-top:36px;font-size:.9em}
figure{margin:0;width:100px;text-align:center;font-size:.75em;color:#3b4550}
figure img{width:96px;height:96px;object-fit:contain;border:2px solid #fff;
background:#eef1f4}
figure.hit img{border-color:#d0312d}figure.hit figcaption{color:#d0312d;font-weight:600}
img.pix{image-rendering:pixelated}.plot{max-width:100%;height:auto}
figcaption span{display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
code{font-size:.9em}.qtext{width:92px;height:92px;border:2px solid #1565c0;display:flex;
align-items:center;justify-content:center;overflow:hidden;font-size:1.05em;padding:2px}
.note{color:#5a6572;font-size:.88em}.gap{padding-top:36px;color:#5a6572}
.up{color:#1565c0}.down{color:#d0312d}.nw{white-space:nowrap}
@media (max-width:900px){body{margin:12px auto;padding:0 10px}
figure{width:76px}figure img{width:72px;height:72px}.rowlabel{width:100%;padding-top:0}
.gap{padding-top:0}.kpi div{min-width:100px;padding:8px 12px}}
"""
