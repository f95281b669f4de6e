// The HTTP API as the console uses it: the session (kept in sessionStorage, so
// it ends with the tab), JSON requests with the bearer token, readable errors.

const KEY = 'pat.session';
const TIMEOUT_MS = 15000;

/** An answer the console shows as it is: the server's `{"error": "…"}` text. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function session() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY));
    return s && s.token && s.expires_at > Date.now() ? s : null;
  } catch {
    return null;
  }
}

function forget() {
  sessionStorage.removeItem(KEY);
}

/** The server's `{"error": "…"}` text, or the status when the body has none. */
async function failure(res) {
  let data = null;
  try {
    data = JSON.parse(await res.text());
  } catch {
    data = null;
  }
  const message = data && typeof data.error === 'string' ? data.error : `HTTP ${res.status}`;
  return new ApiError(res.status, message);
}

async function send(method, path, body, token, accept) {
  const headers = { Accept: accept };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  try {
    return await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (e) {
    throw new ApiError(0, e && e.name === 'TimeoutError' ? 'timeout' : 'unreachable');
  }
}

async function call(method, path, body, token) {
  const res = await send(method, path, body, token, 'application/json');
  if (!res.ok) throw await failure(res);
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  return { data, date: res.headers.get('Date') };
}

/** Log in; the session is kept for this tab. */
export async function login(username, password) {
  const { data } = await call('POST', '/api/v1/session', { username, password });
  const s = { token: data.token, role: data.role, expires_at: data.expires_at, username };
  sessionStorage.setItem(KEY, JSON.stringify(s));
  return s;
}

/** Log out: the token stops working on the server too. */
export async function logout() {
  const s = session();
  forget();
  if (s) {
    try {
      await call('DELETE', '/api/v1/session', undefined, s.token);
    } catch {
      // Already gone; nothing to do.
    }
  }
}

/** Milliseconds to add to this browser's clock to get the server's (0 when within 2 s). */
export let skew = 0;

/** The session's token; without one the page is told (event `pat:unauthorized`). */
function token() {
  const s = session();
  if (!s) {
    window.dispatchEvent(new CustomEvent('pat:unauthorized'));
    throw new ApiError(401, 'not logged in');
  }
  return s.token;
}

/** A 401 ends the session and tells the page; every error is thrown on. */
function rethrow(e) {
  if (e instanceof ApiError && e.status === 401) {
    forget();
    window.dispatchEvent(new CustomEvent('pat:unauthorized'));
  }
  throw e;
}

/**
 * A request with the session's token. A 401 ends the session and tells the
 * page (event `pat:unauthorized`); other errors are thrown as ApiError.
 */
export async function api(method, path, body) {
  const bearer = token();
  try {
    const { data, date } = await call(method, path, body, bearer);
    if (date) {
      const d = Date.parse(date) - Date.now();
      skew = Number.isFinite(d) && Math.abs(d) > 2000 ? d : 0;
    }
    return data;
  } catch (e) {
    return rethrow(e);
  }
}

/**
 * A file the API makes (a CSV report), fetched with the session's token — a
 * plain link could not send it, and a token never goes in a URL. Returns the
 * body as a Blob and the file name the server gives it.
 */
export async function apiFile(path, accept) {
  const bearer = token();
  try {
    const res = await send('GET', path, undefined, bearer, accept);
    if (!res.ok) throw await failure(res);
    const disposition = res.headers.get('Content-Disposition') || '';
    const m = /filename="([^"]+)"/.exec(disposition);
    return { blob: await res.blob(), filename: m ? m[1] : null };
  } catch (e) {
    return rethrow(e);
  }
}

/** The server's time now, as well as this browser knows it. */
export function now() {
  return Date.now() + skew;
}
