// The downloads page: start jobs, follow each one live (SSE, polling when the stream fails),
// cancel, download. No third-party code and no inline script or style, so the page runs under
// a CSP of 'self' only. Job ids live in localStorage so a reload re-attaches to every job.

const STORE_KEY = "delineate.jobs";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const HEALTH_EVERY_MS = 15_000;
const MAX_BACKOFF_S = 30;
// Over HTTP/1.1 a browser opens at most 6 connections per host; each live stream holds one.
// Beyond this many running jobs the rest are polled until a stream frees up, so the page's own
// requests (the form, cancel, health) never queue behind streams.
const MAX_STREAMS = 4;
const MAX_REMEMBERED = 50; // jobs kept in localStorage, newest first
let openStreams = 0;

let config = { jaegerUrl: null, pollIntervalS: 2 };

// ---------------------------------------------------------------- HTTP

/** An HTTP error as the API reports it: {error, message, requestId}, plus Retry-After. */
class ApiError extends Error {
  constructor(status, message, requestId, retryAfterS) {
    super(message);
    this.status = status;
    this.requestId = requestId;
    this.retryAfterS = retryAfterS;
  }
}

const retryAfterOf = (response) => {
  const value = Number.parseFloat(response.headers.get("Retry-After") ?? "");
  return Number.isFinite(value) && value >= 0 ? value : null;
};

/** fetch + JSON; throws ApiError carrying the request id for any non-2xx answer. */
async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `The service did not answer (${err.message})`, null, null);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data?.message ?? `${response.status} ${response.statusText}`;
    const requestId = data?.requestId ?? response.headers.get("X-Request-ID");
    throw new ApiError(response.status, message, requestId, retryAfterOf(response));
  }
  return { data, response };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------- DOM helpers

const $ = (selector, root = document) => root.querySelector(selector);

/** Fill an error box: the message and, when there is one, the request id to quote. */
function showError(box, err) {
  const message = document.createElement("span");
  message.className = "message";
  message.textContent = err.status ? `${err.status}: ${err.message}` : err.message;
  box.replaceChildren(message);
  if (err.requestId) {
    const line = document.createElement("span");
    line.className = "request-id";
    const code = document.createElement("code");
    code.textContent = err.requestId;
    line.append("request id ", code);
    box.append(line);
  }
  box.hidden = false;
}

function formatBytes(size) {
  if (size == null) return "";
  const units = ["B", "KB", "MB", "GB"];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

// ---------------------------------------------------------------- storage

function loadStored() {
  try {
    const items = JSON.parse(localStorage.getItem(STORE_KEY) ?? "[]");
    return Array.isArray(items) ? items.filter((item) => typeof item?.id === "string") : [];
  } catch {
    return [];
  }
}

function saveStored() {
  const items = [...jobs.values()].slice(0, MAX_REMEMBERED).map((job) => ({ id: job.id, fileIds: job.fileIds }));
  localStorage.setItem(STORE_KEY, JSON.stringify(items));
}

// ---------------------------------------------------------------- one job

const jobs = new Map(); // id -> JobView, in display order (newest first)

/** One job's row: renders its state and follows it by SSE, or by polling as a fallback. */
class JobView {
  constructor(id, fileIds) {
    this.id = id;
    this.fileIds = Array.isArray(fileIds) ? fileIds : [];
    this.status = "queued";
    this.source = null;
    this.stopped = false;
    this.node = $("#job-template").content.firstElementChild.cloneNode(true);
    this.node.dataset.jobId = id;
    $(".job-id", this.node).textContent = id;
    $(".files", this.node).textContent = this.fileIds.length
      ? `files ${this.fileIds.join(", ")}`
      : "";
    $(".cancel", this.node).addEventListener("click", () => this.cancel());
    $(".remove", this.node).addEventListener("click", () => removeJob(this.id));
    this.setStatus("queued");
  }

  get finished() {
    return TERMINAL.has(this.status);
  }

  setMode(mode) {
    this.node.dataset.mode = mode;
    $(".mode", this.node).textContent = { live: "live (SSE)", polling: "polling", "": "" }[mode] ?? mode;
  }

  setStatus(status) {
    this.status = status;
    this.node.dataset.status = status;
    $(".status", this.node).textContent = status;
    $(".cancel", this.node).hidden = this.finished;
    $(".remove", this.node).hidden = !this.finished;
    if (this.finished) this.setMode("");
  }

  setProgress(done, total, percent) {
    this.done = done;
    this.total = total;
    const bar = $(".bar", this.node);
    const value = Number.isFinite(percent) ? percent : total ? (100 * done) / total : 0;
    bar.value = value;
    bar.textContent = `${value} %`;
    this.node.dataset.percent = String(value);
    $(".progress-text", this.node).textContent = `${done} of ${total} files · ${value} %`;
  }

  setJobError(text) {
    const box = $(".job-error", this.node);
    box.textContent = text ?? "";
    box.hidden = !text;
  }

  setTrace(traceId) {
    if (!traceId) return;
    $(".trace", this.node).hidden = false;
    $(".trace-id", this.node).textContent = traceId;
    const link = $(".trace-link", this.node);
    if (config.jaegerUrl) {
      link.href = `${config.jaegerUrl}/trace/${traceId}`;
      link.hidden = false;
    }
  }

  /** A full status body, from GET /status, the `snapshot` event, or DELETE. */
  applyStatus(body) {
    const { done, total, percent } = body.progress ?? {};
    if (total != null) this.setProgress(done, total, percent);
    const last = body.files?.at?.(-1);
    if (last) this.showFile(last);
    this.setTrace(body.traceId);
    this.setStatus(body.status);
    if (TERMINAL.has(body.status)) this.applyTerminal(body);
    else this.setJobError(body.status === "retrying" ? body.error : null);
  }

  showFile(file) {
    const found = file.available ? `found, ${formatBytes(file.size)}` : "missing";
    $(".last-file", this.node).textContent = `last: ${file.file_id} (${found})`;
  }

  /** The end: a download link when completed, the reason when failed. */
  applyTerminal(body) {
    this.setStatus(body.status);
    if (body.status === "completed") {
      const total = this.total || this.fileIds.length || 1;
      this.setProgress(total, total, 100);
      const link = $(".download", this.node);
      link.href = body.downloadUrl ?? `/v1/download/${this.id}/file`;
      link.textContent = body.size != null ? `Download (${formatBytes(body.size)})` : "Download";
      link.hidden = false;
    }
    this.setJobError(body.status === "failed" ? body.error || "the job failed" : null);
    this.closeStream();
  }

  /** SSE first; on a stream that cannot (re)connect, fall back to polling. */
  follow() {
    if (this.finished || this.stopped) return;
    if (!("EventSource" in window)) {
      this.poll();
      return;
    }
    if (openStreams >= MAX_STREAMS) {
      this.poll({ untilStreamFree: true });
      return;
    }
    const source = new EventSource(`/v1/download/stream/${encodeURIComponent(this.id)}`);
    openStreams += 1;
    this.source = source;
    this.setMode("live");
    let opened = false;
    const on = (name, handler) =>
      source.addEventListener(name, (event) => {
        if (this.source === source) handler(JSON.parse(event.data));
      });
    source.addEventListener("open", () => {
      opened = true;
    });
    on("snapshot", (body) => this.applyStatus(body));
    on("status", (data) => {
      this.setStatus(data.status);
      this.setJobError(data.status === "retrying" ? data.error : null);
    });
    on("progress", (data) => {
      this.setProgress(data.done, data.total, data.percent);
      if (data.file) this.showFile(data.file);
    });
    for (const name of TERMINAL) on(name, (data) => this.applyTerminal(data));
    source.addEventListener("error", () => {
      if (this.source !== source) return;
      if (source.readyState === EventSource.CLOSED || !opened) {
        // Refused (an error status, 204 after the end) or a reconnect that failed: poll.
        this.closeStream();
        this.poll();
        return;
      }
      // The server ended the stream (its lifetime, a restart): EventSource reconnects by
      // itself with Last-Event-ID; if that attempt fails we get here again with !opened.
      opened = false;
    });
  }

  closeStream() {
    if (this.source) {
      this.source.close();
      this.source = null;
      openStreams -= 1;
    }
  }

  /** GET /status until the job ends, waiting as long as Retry-After says between calls.
   * With untilStreamFree, switch to a live stream as soon as one is available. */
  async poll({ untilStreamFree = false } = {}) {
    if (this.polling || this.stopped) return;
    this.polling = true;
    this.setMode("polling");
    let failures = 0;
    let upgrade = false;
    const box = $(".job-error", this.node);
    try {
      while (!this.finished && !this.stopped) {
        let waitS;
        try {
          const { data, response } = await api("GET", `/v1/download/status/${encodeURIComponent(this.id)}`);
          failures = 0;
          this.applyStatus(data);
          waitS = retryAfterOf(response) ?? config.pollIntervalS ?? 2;
        } catch (err) {
          showError(box, err);
          if (err.status === 404 || err.status === 410) {
            this.setStatus("gone");
            $(".remove", this.node).hidden = false;
            $(".cancel", this.node).hidden = true;
            this.setMode("");
            return;
          }
          failures += 1;
          waitS = err.retryAfterS ?? Math.min(MAX_BACKOFF_S, 2 ** failures);
        }
        if (this.finished || this.stopped) return;
        await sleep(waitS * 1000);
        if (untilStreamFree && openStreams < MAX_STREAMS) {
          upgrade = true;
          return;
        }
      }
    } finally {
      this.polling = false;
      if (upgrade && !this.finished && !this.stopped) this.follow();
    }
  }

  /** DELETE the job: 200/202 carries the new status; 409 means it had already finished. */
  async cancel() {
    const button = $(".cancel", this.node);
    button.disabled = true;
    try {
      const { data } = await api("DELETE", `/v1/download/${encodeURIComponent(this.id)}`);
      if (data?.status) this.applyStatus(data);
    } catch (err) {
      showError($(".job-error", this.node), err);
      if (err.status === 409 && !this.source) this.poll();
    } finally {
      button.disabled = false;
    }
  }

  stop() {
    this.stopped = true;
    this.closeStream();
  }
}

// ---------------------------------------------------------------- the list

function renderEmpty() {
  $("#no-jobs").hidden = jobs.size > 0;
}

function addJob(id, fileIds, { front = true } = {}) {
  if (jobs.has(id)) return jobs.get(id);
  const job = new JobView(id, fileIds);
  const list = $("#jobs");
  if (front) {
    const rest = [...jobs.entries()];
    jobs.clear();
    jobs.set(id, job);
    for (const [key, value] of rest) jobs.set(key, value);
    list.prepend(job.node);
  } else {
    jobs.set(id, job);
    list.append(job.node);
  }
  saveStored();
  renderEmpty();
  job.follow();
  return job;
}

function removeJob(id) {
  const job = jobs.get(id);
  if (!job) return;
  job.stop();
  job.node.remove();
  jobs.delete(id);
  saveStored();
  renderEmpty();
}

// ---------------------------------------------------------------- form and health

function parseIds(text) {
  const parts = text.split(/[\s,;]+/).filter(Boolean);
  const bad = parts.filter((part) => !/^\d+$/.test(part));
  if (bad.length) throw new ApiError(0, `Not a file id: ${bad.join(", ")}`, null, null);
  if (!parts.length) throw new ApiError(0, "Enter at least one file id", null, null);
  return parts.map(Number);
}

async function submit(event) {
  event.preventDefault();
  const errorBox = $("#form-error");
  const button = $("#submit");
  errorBox.hidden = true;
  button.disabled = true;
  try {
    const fileIds = parseIds($("#file-ids").value);
    const { data } = await api("POST", "/v1/download/initiate", { file_ids: fileIds });
    addJob(data.jobId, fileIds);
  } catch (err) {
    showError(errorBox, err);
  } finally {
    button.disabled = false;
  }
}

async function checkHealth() {
  const box = $("#health");
  const text = $("#health-text");
  try {
    const response = await fetch("/health", { headers: { Accept: "application/json" } });
    const body = await response.json();
    const checks = Object.entries(body.checks ?? {})
      .map(([name, value]) => `${name} ${value}`)
      .join(" · ");
    box.dataset.state = body.status === "healthy" ? "healthy" : "unhealthy";
    text.textContent = `Service ${body.status}${checks ? ` (${checks})` : ""}`;
  } catch {
    box.dataset.state = "unreachable";
    text.textContent = "Service unreachable";
  }
}

async function loadConfig() {
  try {
    const { data } = await api("GET", "/ui/config.json");
    config = { ...config, ...data };
  } catch {
    // defaults: no Jaeger links, poll every 2 s unless Retry-After says otherwise
  }
}

async function main() {
  $("#request-form").addEventListener("submit", submit);
  $("#clear-finished").addEventListener("click", () => {
    for (const job of [...jobs.values()]) if (job.finished || job.status === "gone") removeJob(job.id);
  });
  checkHealth();
  setInterval(checkHealth, HEALTH_EVERY_MS);
  await loadConfig();
  for (const item of loadStored()) addJob(item.id, item.fileIds, { front: false });
  renderEmpty();
  document.body.dataset.ready = "true";
}

main();
