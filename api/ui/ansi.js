// ANSI SGR escapes (colours, bold, ...) to spans; every other escape sequence is dropped.
// Text is only ever set with textContent: a log line cannot inject markup.
const SGR = /\x1b\[([0-9;]*)m/g;
const OTHER = /\x1b\[[0-9;?]*[A-Za-ln-z]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]/g;

export function ansiSpans(text) {
  text = text.replace(OTHER, "");
  const out = [];
  let classes = new Set();
  let last = 0;
  const push = (chunk) => {
    if (!chunk) return;
    const span = document.createElement("span");
    if (classes.size) span.className = [...classes].join(" ");
    span.textContent = chunk;
    out.push(span);
  };
  for (const m of text.matchAll(SGR)) {
    push(text.slice(last, m.index));
    last = m.index + m[0].length;
    const codes = m[1] === "" ? [0] : m[1].split(";").map(Number);
    for (const c of codes) {
      if (c === 0) classes = new Set();
      else if (c === 1) classes.add("a-bold");
      else if (c === 2) classes.add("a-dim");
      else if (c === 3) classes.add("a-italic");
      else if (c === 4) classes.add("a-underline");
      else if (c === 22) { classes.delete("a-bold"); classes.delete("a-dim"); }
      else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) { for (const k of [...classes]) if (k.startsWith("a-fg-")) classes.delete(k); classes.add(`a-fg-${c}`); }
      else if (c === 39) { for (const k of [...classes]) if (k.startsWith("a-fg-")) classes.delete(k); }
      else if (c >= 40 && c <= 47) { for (const k of [...classes]) if (k.startsWith("a-bg-")) classes.delete(k); classes.add(`a-bg-${c}`); }
      else if (c === 49) { for (const k of [...classes]) if (k.startsWith("a-bg-")) classes.delete(k); }
    }
  }
  push(text.slice(last));
  return out;
}
