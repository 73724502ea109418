// Server-sent events from a fetch() response (EventSource cannot POST or send an API key).
// Yields each event's data parsed as JSON and returns at `data: [DONE]`. Comments such as the
// server's keep-alive `: ping` are skipped. Aborting the fetch's signal rejects the pending read
// with an AbortError, and the browser closes the connection: the server then stops generating.

const EVENT_END = /\r\n\r\n|\n\n|\r\r/;

function dataOf(block) {
  const lines = [];
  for (const line of block.split(/\r\n|\n|\r/)) {
    if (line.startsWith("data:")) lines.push(line.slice(line.startsWith("data: ") ? 6 : 5));
  }
  return lines.length ? lines.join("\n") : null;
}

export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let match;
      while ((match = EVENT_END.exec(buffer)) !== null) {
        const data = dataOf(buffer.slice(0, match.index));
        buffer = buffer.slice(match.index + match[0].length);
        if (data === null) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
    if (buffer.trim()) {
      const data = dataOf(buffer);
      if (data !== null && data !== "[DONE]") yield JSON.parse(data);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
