// The page's only way to the server: the public HTTP API, with the key typed into the page.
// URLs are relative, so the page works behind a proxy that serves the API under a prefix.

const KEY_STORE = "modelserve.api_key"; // sessionStorage: this tab only, gone when it closes

/** An error answer of the API (`{detail, status, request_id}`), or the network failing. */
export class ApiError extends Error {
  constructor(status, detail, requestId = null, retryAfter = null) {
    super(detail);
    this.status = status; // 0: no answer at all
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }

  /** One sentence for a person: what went wrong and, where there is one, what to do. */
  describe() {
    if (this.status === 0) return `Could not reach the server: ${this.message}`;
    if (this.status === 401) {
      return "The server needs an API key (or the key given is wrong): enter it under API key above.";
    }
    const id = this.requestId ? ` (request id ${this.requestId})` : "";
    return `${this.status}: ${this.message}${id}`;
  }
}

let apiKey = sessionStorage.getItem(KEY_STORE) || "";

export function getKey() {
  return apiKey;
}

export function setKey(key) {
  apiKey = key.trim();
  if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey);
  else sessionStorage.removeItem(KEY_STORE);
}

/**
 * Call the API: `path` relative to the page, `query` an object (undefined/empty values left
 * out), `json` or `form` the body, `accept` the wanted media type. Resolves to the parsed
 * JSON (or a Blob for other types); rejects with an ApiError.
 */
export async function call(path, { method = "GET", query, json, form, accept = "application/json" } = {}) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
  }
  const url = params.toString() ? `${path}?${params}` : path;
  const headers = { Accept: accept };
  if (apiKey) headers["X-API-Key"] = apiKey;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets multipart/form-data with its boundary
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (e) {
    throw new ApiError(0, e.message);
  }
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    let detail = response.statusText || "error";
    let requestId = response.headers.get("x-request-id");
    if (type.includes("json")) {
      const err = await response.json().catch(() => null);
      if (err && err.detail) detail = typeof err.detail === "string" ? err.detail : JSON.stringify(err.detail);
      if (err && err.request_id) requestId = err.request_id;
    }
    throw new ApiError(response.status, detail, requestId, response.headers.get("retry-after"));
  }
  return type.includes("json") ? response.json() : response.blob();
}
