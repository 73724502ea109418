// Markdown to DOM nodes, for model output.
//
// Safe by construction: nothing is ever parsed as HTML. Every piece of the model's text becomes a
// text node, elements come only from the fixed set below, and a link keeps its href only for
// http(s) and mailto URLs. Unfinished constructs (an open code fence while the answer streams)
// render as what they will become, so the page does not flicker between two layouts.
//
// Blocks: fenced code, headings, bullet and numbered lists, block quotes, rules, paragraphs
// (single newlines kept as line breaks, as chat models mean them). Inline: `code`, **bold**,
// *italic*, ~~strike~~, [text](url).

const SAFE_URL = /^(https?:\/\/|mailto:)/i;
const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const HEADING = /^\s{0,3}(#{1,6})(?:\s+(.*))?$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
// Nesting deeper than this renders as text: hostile input cannot recurse without bound.
const MAX_DEPTH = 8;

// The renderer is linear in the length of the text (model output is untrusted and may be built to
// make a backtracking parser quadratic): inline markup is found by one left-to-right scan over
// tables of "next closing delimiter" positions, built once per span, and block regexes are
// anchored and unambiguous. `work.steps` counts the characters visited (tests check linearity).

function el(doc, tag, ...children) {
  const node = doc.createElement(tag);
  node.append(...children);
  return node;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || isRule(line) || LIST_ITEM.test(line) || QUOTE.test(line);
}

function isRule(line) {
  return line.length <= 256 && RULE.test(line);  // rules are short; long lines never need the regex
}

const isSpace = (c) => c === " " || c === "\t" || c === "\n" || c === "\r" || c === "\f" || c === "\v";

/** Per position p: the first index >= p where `closes(i)` holds, or -1 (one backward pass). */
function nextTable(text, closes, work) {
  const next = new Int32Array(text.length + 2).fill(-1);
  for (let i = text.length - 1; i >= 0; i -= 1) {
    next[i] = closes(i) ? i : next[i + 1];
    work.steps += 1;
  }
  return next;
}

function tables(text, work) {
  const at = (i) => text[i] ?? "";
  const solid = (i) => i >= 0 && i < text.length && !isSpace(text[i]);
  return {
    bold: nextTable(text, (i) => at(i) === "*" && at(i + 1) === "*" && solid(i - 1), work),
    strike: nextTable(text, (i) => at(i) === "~" && at(i + 1) === "~" && solid(i - 1), work),
    star: nextTable(text, (i) => at(i) === "*" && solid(i - 1) && at(i - 1) !== "*", work),
    bracketEnd: nextTable(text, (i) => at(i) === "]" || at(i) === "\n", work),
    urlEnd: nextTable(text, (i) => at(i) === ")" || isSpace(at(i)), work),
    solid: nextTable(text, (i) => !isSpace(at(i)), work),
  };
}

/** Backtick runs, by length, in order; `closing(len, after)` finds the next run of that length. */
function backtickRuns(text, work) {
  const runs = new Map();
  const cursor = new Map();
  for (let i = 0; i < text.length; ) {
    work.steps += 1;
    if (text[i] !== "`") {
      i += 1;
      continue;
    }
    let j = i;
    while (j < text.length && text[j] === "`") j += 1;
    if (!runs.has(j - i)) runs.set(j - i, []);
    runs.get(j - i).push(i);
    work.steps += j - i;
    i = j;
  }
  return (length, after) => {
    const list = runs.get(length) ?? [];
    let k = cursor.get(length) ?? 0;  // the scan only moves forward: so may each cursor
    while (k < list.length && list[k] < after) k += 1;
    cursor.set(length, k);
    return k < list.length ? list[k] : -1;
  };
}

function appendInline(doc, parent, text, work, depth = 0) {
  if (depth >= MAX_DEPTH) {
    parent.append(doc.createTextNode(text));
    return;
  }
  const t = tables(text, work);
  const closing = backtickRuns(text, work);
  const nested = (node, inner) => {
    appendInline(doc, node, inner, work, depth + 1);
    parent.append(node);
  };
  let plain = 0;  // start of text not yet emitted
  let i = 0;
  const flush = (upto) => {
    if (upto > plain) parent.append(doc.createTextNode(text.slice(plain, upto)));
  };
  while (i < text.length) {
    work.steps += 1;
    const c = text[i];
    let end = -1;  // the index just past the construct found at i
    if (c === "`") {
      let run = i;
      while (run < text.length && text[run] === "`") run += 1;
      const close = closing(run - i, run + 1);  // at least one character of code
      if (close !== -1 && text[close - 1] !== "`") {
        flush(i);
        const code = text.slice(run, close);
        parent.append(el(doc, "code", doc.createTextNode(code.trim() || code)));
        end = close + (run - i);
      } else {
        i = run;  // the whole run is text
        continue;
      }
    } else if (c === "*" && text[i + 1] === "*" && i + 2 < text.length && !isSpace(text[i + 2])) {
      const close = t.bold[i + 3];
      if (close !== -1) {
        flush(i);
        nested(el(doc, "strong"), text.slice(i + 2, close));
        end = close + 2;
      }
    } else if (c === "~" && text[i + 1] === "~" && i + 2 < text.length && !isSpace(text[i + 2])) {
      const close = t.strike[i + 3];
      if (close !== -1) {
        flush(i);
        nested(el(doc, "del"), text.slice(i + 2, close));
        end = close + 2;
      }
    }
    if (end === -1 && c === "*" && i + 1 < text.length && !isSpace(text[i + 1]) && text[i + 1] !== "*") {
      const close = t.star[i + 2];
      if (close !== -1) {
        flush(i);
        nested(el(doc, "em"), text.slice(i + 1, close));
        end = close + 1;
      }
    }
    if (end === -1 && c === "[") {
      const labelEnd = t.bracketEnd[i + 1];
      if (labelEnd > i + 1 && text[labelEnd] === "]" && text[labelEnd + 1] === "(") {
        const urlStart = t.solid[labelEnd + 2];
        const urlEnd = urlStart === -1 ? -1 : t.urlEnd[urlStart];
        const after = urlEnd === -1 ? -1 : t.solid[urlEnd];
        if (urlStart !== -1 && urlEnd > urlStart && after !== -1 && text[after] === ")") {
          flush(i);
          const [label, url] = [text.slice(i + 1, labelEnd), text.slice(urlStart, urlEnd)];
          if (SAFE_URL.test(url)) {
            const a = el(doc, "a");
            a.href = url;
            a.rel = "noopener noreferrer nofollow";
            a.target = "_blank";
            nested(a, label);
          } else {
            parent.append(doc.createTextNode(text.slice(i, after + 1)));  // e.g. javascript: links stay plain text
          }
          end = after + 1;
        }
      }
    }
    if (end === -1) {
      i += 1;
    } else {
      i = plain = end;
    }
  }
  flush(text.length);
}

function appendLines(doc, parent, lines, work) {
  lines.forEach((line, k) => {
    if (k > 0) parent.append(el(doc, "br"));
    appendInline(doc, parent, line, work);
  });
}

/** A heading's text: without the closing run of #s and the spaces around it (no regex). */
function headingText(rest) {
  let end = rest.length;
  while (end > 0 && isSpace(rest[end - 1])) end -= 1;
  let hashes = end;
  while (hashes > 0 && rest[hashes - 1] === "#") hashes -= 1;
  if (hashes < end && (hashes === 0 || isSpace(rest[hashes - 1]))) end = hashes;
  while (end > 0 && isSpace(rest[end - 1])) end -= 1;
  return rest.slice(0, end);
}

function renderBlocks(doc, parent, lines, work, depth = 0) {
  if (depth >= MAX_DEPTH) {  // too deeply nested: the rest is text
    const p = el(doc, "p");
    appendLines(doc, p, lines, work);
    parent.append(p);
    return;
  }
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    work.steps += line.length + 1;
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1;  // the closing fence, or past the end while the answer is still streaming
      const code = el(doc, "code", doc.createTextNode(body.join("\n")));
      if (fence[2]) code.dataset.lang = fence[2];
      parent.append(el(doc, "pre", code));
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const h = el(doc, `h${Math.min(heading[1].length + 2, 6)}`);  // # is h3: answers sit inside a page
      appendInline(doc, h, headingText(heading[2] ?? ""), work);
      parent.append(h);
      i += 1;
      continue;
    }
    if (isRule(line)) {
      parent.append(el(doc, "hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(QUOTE.exec(lines[i++])[1]);
      const quote = el(doc, "blockquote");
      renderBlocks(doc, quote, inner, work, depth + 1);
      parent.append(quote);
      continue;
    }
    const item = LIST_ITEM.exec(line);
    if (item) {
      const ordered = /\d/.test(item[2]);
      const list = el(doc, ordered ? "ol" : "ul");
      if (ordered && parseInt(item[2], 10) !== 1) list.start = parseInt(item[2], 10);
      const indent = item[1].length;
      while (i < lines.length) {
        const current = LIST_ITEM.exec(lines[i]);
        if (!current || /\d/.test(current[2]) !== ordered || current[1].length > indent + 1) break;
        const body = [current[3]];
        i += 1;
        // Indented lines (and nested items) belong to this item.
        while (i < lines.length && lines[i].trim() && /^\s{2,}/.test(lines[i])) body.push(lines[i++].replace(/^\s{2,4}/, ""));
        const li = el(doc, "li");
        if (body.length === 1) appendInline(doc, li, body[0], work);
        else renderBlocks(doc, li, body, work, depth + 1);
        list.append(li);
        if (i < lines.length && !lines[i].trim() && LIST_ITEM.test(lines[i + 1] ?? "")) i += 1;  // loose list
      }
      parent.append(list);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && (paragraph.length === 0 || !startsBlock(lines[i]))) paragraph.push(lines[i++]);
    const p = el(doc, "p");
    appendLines(doc, p, paragraph, work);
    parent.append(p);
  }
}

/** A DocumentFragment for `text`; `doc` is the document that owns the nodes; `work.steps`
 * counts the characters visited. */
export function renderMarkdown(text, doc = document, work = { steps: 0 }) {
  const fragment = doc.createDocumentFragment();
  renderBlocks(doc, fragment, String(text).replace(/\r\n?/g, "\n").split("\n"), work);
  return fragment;
}
