// Pure helpers for the web app: wei amounts (BigInt, never floats), durations,
// addresses, and a Server-Sent Events parser. No DOM here, so node can test it.

const GROUP = /\B(?=(\d{3})+(?!\d))/g;

/** A wei amount (decimal string, number or BigInt) as a decimal token amount.
 *  `maxFraction` truncates (never rounds up) the fractional digits; a non-zero
 *  amount that truncates to zero is shown as "<0.000001". */
export function formatUnits(wei, { decimals = 18, maxFraction = decimals, group = true } = {}) {
  let value = BigInt(wei);
  const negative = value < 0n;
  if (negative) value = -value;
  const base = 10n ** BigInt(decimals);
  const whole = value / base;
  let fraction = (value % base).toString().padStart(decimals, "0");
  fraction = fraction.slice(0, maxFraction).replace(/0+$/, "");
  if (whole === 0n && !fraction && value !== 0n) {
    return `${negative ? ">-" : "<"}0.${"0".repeat(Math.max(0, maxFraction - 1))}1`;
  }
  const wholeText = group ? whole.toString().replace(GROUP, ",") : whole.toString();
  return `${negative ? "-" : ""}${wholeText}${fraction ? "." + fraction : ""}`;
}

/** "12:05", "1:02:03" or "6d 23:59:59" for a number of seconds (negatives are 0). */
export function formatDuration(totalSeconds) {
  let s = Math.max(0, Math.floor(Number(totalSeconds) || 0));
  const days = Math.floor(s / 86400);
  s -= days * 86400;
  const hours = Math.floor(s / 3600);
  s -= hours * 3600;
  const minutes = Math.floor(s / 60);
  const seconds = s - minutes * 60;
  const pad = (n) => String(n).padStart(2, "0");
  if (days) return `${days}d ${pad(hours)}:${pad(minutes)}:${pad(seconds)}`;
  return hours ? `${hours}:${pad(minutes)}:${pad(seconds)}` : `${minutes}:${pad(seconds)}`;
}

/** Spoken form of a duration for screen readers and titles: "9 minutes 5 seconds". */
export function describeDuration(totalSeconds) {
  let s = Math.max(0, Math.floor(Number(totalSeconds) || 0));
  const parts = [];
  for (const [unit, size] of [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]]) {
    const n = Math.floor(s / size);
    s -= n * size;
    if (n) parts.push(`${n} ${unit}${n === 1 ? "" : "s"}`);
  }
  return parts.length ? parts.join(" ") : "0 seconds";
}

/** 0x1234…abcd */
export function shortHex(hex, head = 6, tail = 4) {
  const text = String(hex ?? "");
  return text.length > head + tail + 1 ? `${text.slice(0, head)}…${text.slice(-tail)}` : text;
}

/** A fraction in [0, 1] as a percentage with one decimal. */
export function formatPercent(fraction) {
  return `${(Number(fraction) * 100).toFixed(1)}%`;
}

/** The cost of a session after `elapsed` seconds at `pricePerSecond` wei, capped at `stake`. */
export function costAfter(elapsed, pricePerSecond, stake) {
  const seconds = BigInt(Math.max(0, Math.floor(Number(elapsed) || 0)));
  const cost = seconds * BigInt(pricePerSecond);
  const cap = BigInt(stake);
  return cost < cap ? cost : cap;
}

/** Incremental SSE parser: push() decoded text, get back the `data:` payloads of
 *  every complete event (multi-line data joined with "\n"). */
export class SseParser {
  constructor() {
    this.buffer = "";
  }

  push(text) {
    this.buffer += text.replace(/\r\n?/g, "\n");
    const events = [];
    let end;
    while ((end = this.buffer.indexOf("\n\n")) !== -1) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data = block.split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5));
      if (data.length) events.push(data.join("\n"));
    }
    return events;
  }
}
