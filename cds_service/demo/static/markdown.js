// A small Markdown renderer for CDS Hooks card details (GitHub-Flavored Markdown, the common subset).
//
// Safe by construction: it builds DOM nodes with createElement and textContent and never assigns
// HTML, so raw HTML in a detail shows as the literal text it is. Links keep only http(s) and mailto
// targets and open in a new tab without a referrer. Images are shown as links (the page loads
// nothing from other hosts).
//
// Supported: paragraphs, hard line breaks, headings, bullet and numbered lists (nested by indent),
// block quotes, fenced and indented code, thematic breaks, tables, **strong**, *emphasis*,
// ~~strikethrough~~, `code`, [links](url), <https://autolinks> and bare https:// URLs, backslash escapes.

const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const FENCE = /^\s{0,3}(```+|~~~+)(.*)$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const TABLE_SEPARATOR = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const ESCAPABLE = /[\\`*_{}[\]()#+\-.!~|>]/;

/** A safe URL for an href, or null. Relative URLs are refused: a card's links must be absolute. */
export function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return SAFE_SCHEMES.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

/** Render Markdown text into a DocumentFragment. */
export function renderMarkdown(text, doc = document) {
  const fragment = doc.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  renderBlocks(lines, fragment, doc);
  return fragment;
}

function renderBlocks(lines, parent, doc) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of the text)
      appendCode(parent, body.join("\n"), doc);
      continue;
    }
    if (/^( {4}|\t)/.test(line)) {
      const body = [];
      while (i < lines.length && (/^( {4}|\t)/.test(lines[i]) || !lines[i].trim())) body.push(lines[i++].replace(/^( {4}|\t)/, ""));
      appendCode(parent, body.join("\n").replace(/\n+$/, ""), doc);
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      // Card details sit under the card's own heading: # becomes h4, ## h5, ### and deeper h6.
      const level = Math.min(heading[1].length + 3, 6);
      const element = doc.createElement(`h${level}`);
      renderInline(heading[2], element, doc);
      parent.appendChild(element);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      parent.appendChild(doc.createElement("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(QUOTE.exec(lines[i++])[1]);
      const quote = doc.createElement("blockquote");
      renderBlocks(body, quote, doc);
      parent.appendChild(quote);
      continue;
    }
    if (LIST_ITEM.test(line)) {
      i = renderList(lines, i, parent, doc);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEPARATOR.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      i = renderTable(lines, i, parent, doc);
      continue;
    }
    const body = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) body.push(lines[i++]);
    if (!body.length) body.push(lines[i++]); // a line that starts a block but was not taken above
    const paragraph = doc.createElement("p");
    renderParagraphLines(body, paragraph, doc);
    parent.appendChild(paragraph);
  }
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || LIST_ITEM.test(line);
}

function appendCode(parent, text, doc) {
  const pre = doc.createElement("pre");
  const code = doc.createElement("code");
  code.textContent = text;
  pre.appendChild(code);
  parent.appendChild(pre);
}

function renderParagraphLines(body, element, doc) {
  body.forEach((raw, index) => {
    const last = index === body.length - 1;
    const hardBreak = !last && (/ {2,}$/.test(raw) || /\\$/.test(raw));
    const text = raw.trim().replace(/\\$/, "");
    renderInline(text, element, doc);
    if (hardBreak) element.appendChild(doc.createElement("br"));
    else if (!last) element.appendChild(doc.createTextNode("\n"));
  });
}

function indentOf(text) {
  return text.replace(/\t/g, "    ").length;
}

function renderList(lines, start, parent, doc) {
  const first = LIST_ITEM.exec(lines[start]);
  const indent = indentOf(first[1]);
  const ordered = /\d/.test(first[2]);
  const list = doc.createElement(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.setAttribute("start", String(parseInt(first[2], 10)));
  let i = start;
  while (i < lines.length) {
    const match = LIST_ITEM.exec(lines[i]);
    if (!match || indentOf(match[1]) !== indent || /\d/.test(match[2]) !== ordered) break;
    const item = doc.createElement("li");
    const text = [match[3]];
    i += 1;
    // Continuation lines (indented more than the marker, not a new item) belong to this item.
    while (i < lines.length && lines[i].trim() && !LIST_ITEM.test(lines[i]) && indentOf(/^\s*/.exec(lines[i])[0]) > indent) {
      text.push(lines[i++]);
    }
    renderParagraphLines(text, item, doc);
    // A nested list: items indented deeper than this one.
    while (i < lines.length) {
      const nested = LIST_ITEM.exec(lines[i]);
      if (!nested || indentOf(nested[1]) <= indent) break;
      i = renderList(lines, i, item, doc);
    }
    list.appendChild(item);
    // A blank line between items keeps the list going; anything else ends it.
    if (i < lines.length && !lines[i].trim() && i + 1 < lines.length) {
      const next = LIST_ITEM.exec(lines[i + 1]);
      if (next && indentOf(next[1]) === indent) i += 1;
    }
  }
  parent.appendChild(list);
  return i;
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  const cells = [];
  let current = "";
  for (let i = 0; i < row.length; i += 1) {
    if (row[i] === "\\" && row[i + 1] === "|") {
      current += "|";
      i += 1;
    } else if (row[i] === "|") {
      cells.push(current.trim());
      current = "";
    } else {
      current += row[i];
    }
  }
  cells.push(current.trim());
  return cells;
}

function renderTable(lines, start, parent, doc) {
  const header = splitRow(lines[start]);
  const aligns = splitRow(lines[start + 1]).map((cell) => {
    if (cell.startsWith(":") && cell.endsWith(":")) return "center";
    if (cell.endsWith(":")) return "right";
    return cell.startsWith(":") ? "left" : null;
  });
  const table = doc.createElement("table");
  const head = doc.createElement("thead");
  const headRow = doc.createElement("tr");
  header.forEach((cell, index) => headRow.appendChild(tableCell("th", cell, aligns[index], doc)));
  head.appendChild(headRow);
  table.appendChild(head);
  const body = doc.createElement("tbody");
  let i = start + 2;
  while (i < lines.length && lines[i].trim() && lines[i].includes("|")) {
    const row = doc.createElement("tr");
    const cells = splitRow(lines[i]);
    header.forEach((_, index) => row.appendChild(tableCell("td", cells[index] ?? "", aligns[index], doc)));
    body.appendChild(row);
    i += 1;
  }
  if (body.childNodes.length) table.appendChild(body);
  const wrapper = doc.createElement("div");
  wrapper.className = "table-scroll";
  wrapper.appendChild(table);
  parent.appendChild(wrapper);
  return i;
}

function tableCell(tag, text, align, doc) {
  const cell = doc.createElement(tag);
  if (tag === "th") cell.setAttribute("scope", "col");
  if (align) cell.style.textAlign = align;
  renderInline(text, cell, doc);
  return cell;
}

// label is Markdown (a [label](url) link) unless plain is true (an autolink shows its URL as typed).
function appendLink(parent, label, target, doc, plain = false) {
  const href = safeUrl(target);
  const link = href ? doc.createElement("a") : null;
  if (link) {
    link.href = href;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  }
  // An unsafe or relative target keeps the words and drops the link.
  const holder = link ?? parent;
  if (plain || !label) holder.appendChild(doc.createTextNode(label || target));
  else renderInline(label, holder, doc, false);
  if (link) parent.appendChild(link);
}

/** Find the closing delimiter of an inline span, skipping escaped characters and code spans. */
function closingIndex(text, delimiter, from) {
  for (let i = from; i < text.length; i += 1) {
    if (text[i] === "\\") {
      i += 1;
      continue;
    }
    if (text[i] === "`") {
      const end = text.indexOf("`", i + 1);
      if (end > i) i = end;
      continue;
    }
    if (text.startsWith(delimiter, i)) {
      // A closing delimiter is not preceded by whitespace, and a single * or _ is not part of a double one.
      if (/\s/.test(text[i - 1] ?? " ")) continue;
      if (delimiter.length === 1 && text[i + 1] === delimiter) {
        i += 1;
        continue;
      }
      if (delimiter === "_" && /[A-Za-z0-9]/.test(text[i + 1] ?? "")) continue; // intraword underscore
      return i;
    }
  }
  return -1;
}

/** Render inline Markdown into parent. */
export function renderInline(text, parent, doc = document, links = true) {
  let buffer = "";
  const flush = () => {
    if (buffer) parent.appendChild(doc.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    const rest = text.slice(i);
    if (ch === "\\" && i + 1 < text.length && ESCAPABLE.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "`") {
      const ticks = /^`+/.exec(rest)[0];
      const end = text.indexOf(ticks, i + ticks.length);
      if (end > i) {
        flush();
        const code = doc.createElement("code");
        code.textContent = text.slice(i + ticks.length, end).trim();
        parent.appendChild(code);
        i = end + ticks.length;
        continue;
      }
    }
    const wordBefore = /[A-Za-z0-9]/.test(text[i - 1] ?? "");
    if ((ch === "*" || ch === "_") && text[i + 1] === ch && !/\s/.test(text[i + 2] ?? " ") && !(ch === "_" && wordBefore)) {
      const end = closingIndex(text, ch + ch, i + 2);
      if (end > i + 2) {
        flush();
        const strong = doc.createElement("strong");
        renderInline(text.slice(i + 2, end), strong, doc, links);
        parent.appendChild(strong);
        i = end + 2;
        continue;
      }
    }
    if (ch === "~" && text[i + 1] === "~" && !/\s/.test(text[i + 2] ?? " ")) {
      const end = closingIndex(text, "~~", i + 2);
      if (end > i + 2) {
        flush();
        const del = doc.createElement("del");
        renderInline(text.slice(i + 2, end), del, doc, links);
        parent.appendChild(del);
        i = end + 2;
        continue;
      }
    }
    if ((ch === "*" || ch === "_") && text[i + 1] !== ch && !/\s/.test(text[i + 1] ?? " ") && !(ch === "_" && wordBefore)) {
      const end = closingIndex(text, ch, i + 1);
      if (end > i + 1) {
        flush();
        const em = doc.createElement("em");
        renderInline(text.slice(i + 1, end), em, doc, links);
        parent.appendChild(em);
        i = end + 1;
        continue;
      }
    }
    if (ch === "[" || (ch === "!" && text[i + 1] === "[")) {
      const image = ch === "!";
      const match = /^\[((?:\\.|[^\]\\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)/.exec(rest.slice(image ? 1 : 0));
      if (match) {
        flush();
        if (links) appendLink(parent, match[1] || (image ? "image" : ""), match[2], doc);
        else renderInline(match[1], parent, doc, false); // no link inside a link
        i += match[0].length + (image ? 1 : 0);
        continue;
      }
    }
    if (ch === "<" && links) {
      const match = /^<((?:https?|mailto):[^>\s]+)>/i.exec(rest);
      if (match) {
        flush();
        appendLink(parent, match[1], match[1], doc, true);
        i += match[0].length;
        continue;
      }
    }
    if ((ch === "h" || ch === "H") && !wordBefore && links) {
      const match = /^https?:\/\/[^\s<]*[^\s<.,:;!?'")\]*_~]/i.exec(rest);
      if (match) {
        flush();
        appendLink(parent, match[0], match[0], doc, true);
        i += match[0].length;
        continue;
      }
    }
    buffer += ch;
    i += 1;
  }
  flush();
}
