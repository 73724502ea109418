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
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|~~(?=\S)([\s\S]*?\S)~~|\*(?=[^\s*])([\s\S]*?[^\s*])\*|\[([^\]\n]+)\]\(\s*([^)\s]+)\s*\)/;

function el(doc, tag, ...children) {
  const node = doc.createElement(tag);
  node.append(...children);
  return node;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || LIST_ITEM.test(line) || QUOTE.test(line);
}

function appendInline(doc, parent, text) {
  let rest = text;
  while (rest) {
    const m = INLINE.exec(rest);
    if (!m) {
      parent.append(doc.createTextNode(rest));
      return;
    }
    if (m.index > 0) parent.append(doc.createTextNode(rest.slice(0, m.index)));
    if (m[1] !== undefined) {
      parent.append(el(doc, "code", doc.createTextNode(m[2].trim() || m[2])));
    } else if (m[3] !== undefined) {
      const strong = el(doc, "strong");
      appendInline(doc, strong, m[3]);
      parent.append(strong);
    } else if (m[4] !== undefined) {
      const del = el(doc, "del");
      appendInline(doc, del, m[4]);
      parent.append(del);
    } else if (m[5] !== undefined) {
      const em = el(doc, "em");
      appendInline(doc, em, m[5]);
      parent.append(em);
    } else {
      const [label, url] = [m[6], m[7]];
      if (SAFE_URL.test(url)) {
        const a = el(doc, "a");
        a.href = url;
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        appendInline(doc, a, label);
        parent.append(a);
      } else {
        parent.append(doc.createTextNode(m[0]));  // e.g. javascript: links stay plain text
      }
    }
    rest = rest.slice(m.index + m[0].length);
  }
}

function appendLines(doc, parent, lines) {
  lines.forEach((line, k) => {
    if (k > 0) parent.append(el(doc, "br"));
    appendInline(doc, parent, line);
  });
}

function renderBlocks(doc, parent, lines) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
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
      appendInline(doc, h, heading[2]);
      parent.append(h);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      parent.append(el(doc, "hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(QUOTE.exec(lines[i++])[1]);
      const quote = el(doc, "blockquote");
      renderBlocks(doc, quote, inner);
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
        if (body.length === 1) appendInline(doc, li, body[0]);
        else renderBlocks(doc, li, body);
        list.append(li);
        if (i < lines.length && !lines[i].trim() && LIST_ITEM.test(lines[i + 1] ?? "")) i += 1;  // loose list
      }
      parent.append(list);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && (paragraph.length === 0 || !startsBlock(lines[i]))) paragraph.push(lines[i++]);
    const p = el(doc, "p");
    appendLines(doc, p, paragraph);
    parent.append(p);
  }
}

/** A DocumentFragment for `text`; `doc` is the document that owns the nodes. */
export function renderMarkdown(text, doc = document) {
  const fragment = doc.createDocumentFragment();
  renderBlocks(doc, fragment, String(text).replace(/\r\n?/g, "\n").split("\n"));
  return fragment;
}
