/** Thin client for the server's `/v4` report API (same origin). Every failure is an ApiError. */
import { isRecord, parseJson, parseReport, type Report, type ReportStatus } from './types';

export type ApiErrorKind = 'http' | 'network' | 'bad-response';

/** Body of a 4xx/5xx answer: `{"error":"..", "currentStatus":"..", "allowed":[..]}` (extras optional). */
export interface ApiErrorBody {
  error?: string;
  currentStatus?: string;
  allowed?: string[];
}

export class ApiError extends Error {
  readonly kind: ApiErrorKind;
  readonly status: number | null;
  readonly body: ApiErrorBody | null;

  constructor(kind: ApiErrorKind, message: string, status: number | null = null, body: ApiErrorBody | null = null) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.body = body;
  }
}

function parseErrorBody(value: unknown): ApiErrorBody | null {
  if (!isRecord(value)) return null;
  const body: ApiErrorBody = {};
  if (typeof value.error === 'string') body.error = value.error;
  if (typeof value.currentStatus === 'string') body.currentStatus = value.currentStatus;
  if (Array.isArray(value.allowed)) {
    body.allowed = value.allowed.filter((s): s is string => typeof s === 'string');
  }
  return body;
}

function httpErrorMessage(status: number, body: ApiErrorBody | null): string {
  const detail = body?.error ?? 'no details';
  if (status === 409 && body) {
    const allowed = body.allowed && body.allowed.length > 0 ? body.allowed.join(', ') : 'none';
    const current = body.currentStatus ? `current status: ${body.currentStatus}; ` : '';
    return `Conflict (HTTP 409): ${detail} (${current}allowed: ${allowed})`;
  }
  if (status === 404) return `Not found (HTTP 404): ${detail}`;
  if (status === 503) return `Service unavailable (HTTP 503): ${detail}`;
  return `Request failed (HTTP ${status}): ${detail}`;
}

/**
 * The session's bearer token (access control on, `--auth jwt`), and what to do when the server
 * answers 401 to it (the token expired or was revoked): sent with every request.
 */
let bearerToken: string | null = null;
let onUnauthorized: ((message: string) => void) | null = null;

export function setSession(token: string | null, unauthorized: ((message: string) => void) | null = null): void {
  bearerToken = token;
  onUnauthorized = unauthorized;
}

export function hasSession(): boolean {
  return bearerToken !== null;
}

interface RequestOptions {
  body?: unknown;
  signal?: AbortSignal;
  idempotencyKey?: string;
}

async function request(method: string, path: string, init: RequestOptions = {}): Promise<unknown> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (init.body !== undefined) headers['Content-Type'] = 'application/json';
  if (init.idempotencyKey !== undefined) headers['Idempotency-Key'] = init.idempotencyKey;
  if (bearerToken !== null) headers.Authorization = `Bearer ${bearerToken}`;
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      signal: init.signal,
    });
  } catch (err) {
    if (err instanceof DOMException && err.name === 'AbortError') throw err;
    throw new ApiError('network', 'Network error: could not reach the server. Check your connection and try again.');
  }
  const text = await response.text().catch(() => '');
  const json = text === '' ? undefined : parseJson(text);
  if (!response.ok) {
    const body = parseErrorBody(json);
    if (response.status === 401 && bearerToken !== null) onUnauthorized?.(body?.error ?? 'the token was refused');
    throw new ApiError('http', httpErrorMessage(response.status, body), response.status, body);
  }
  return json;
}

/** Pauses before the 2nd and 3rd attempt of a write. */
export const WRITE_RETRY_DELAYS_MS = [250, 750];

/** A fresh random key (works without a secure context, unlike `crypto.randomUUID`). */
export function newIdempotencyKey(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * A write with an `Idempotency-Key`: when the answer is lost (network error) or the server is
 * briefly unavailable (503), it is sent again with the same key, so the server applies it once.
 */
async function write(method: string, path: string, body?: unknown): Promise<unknown> {
  const idempotencyKey = newIdempotencyKey();
  for (let attempt = 0; ; attempt++) {
    try {
      return await request(method, path, { body, idempotencyKey });
    } catch (err) {
      const retriable = err instanceof ApiError && (err.kind === 'network' || err.status === 503);
      const delay = WRITE_RETRY_DELAYS_MS[attempt];
      if (!retriable || delay === undefined) throw err;
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

function userQuery(userId: string): string {
  return `user_id=${encodeURIComponent(userId)}`;
}

function expectReport(value: unknown): Report {
  const report = parseReport(value);
  if (!report) throw new ApiError('bad-response', 'The server sent an unexpected response.');
  return report;
}

/** The stream URL; `lastEventId` resumes after that event (a tab taking over the shared stream). */
export function sseUrl(userId: string, lastEventId: string | null = null): string {
  const url = `/v4/sse?${userQuery(userId)}`;
  return lastEventId ? `${url}&lastEventId=${encodeURIComponent(lastEventId)}` : url;
}

/**
 * The stream URL with a fresh single-use ticket (`POST /auth/ticket`), for a session with a
 * token: EventSource cannot send the token itself. `lastEventId` resumes where the last
 * stream stopped (a new EventSource does not send Last-Event-ID by itself).
 */
export async function ticketedSseUrl(userId: string, lastEventId: string | null): Promise<string> {
  const value = await request('POST', '/auth/ticket');
  if (!isRecord(value) || typeof value.ticket !== 'string') {
    throw new ApiError('bad-response', 'The server sent an unexpected response.');
  }
  let url = `${sseUrl(userId)}&ticket=${encodeURIComponent(value.ticket)}`;
  if (lastEventId) url += `&lastEventId=${encodeURIComponent(lastEventId)}`;
  return url;
}

export type AuthMode = 'none' | 'jwt';

/** Whether the server wants tokens (`GET /auth/config`); `none` when it does not say. */
export async function fetchAuthMode(): Promise<AuthMode> {
  try {
    const value = await request('GET', '/auth/config');
    return isRecord(value) && value.mode === 'jwt' ? 'jwt' : 'none';
  } catch {
    return 'none';
  }
}

export async function listReports(userId: string, signal?: AbortSignal): Promise<Report[]> {
  const value = await request('GET', `/v4/reports?${userQuery(userId)}`, { signal });
  if (!Array.isArray(value)) throw new ApiError('bad-response', 'The server sent an unexpected response.');
  return value.map(expectReport);
}

export async function createReport(userId: string): Promise<Report> {
  return expectReport(await write('POST', `/v4/new/report?${userQuery(userId)}`));
}

export async function updateReportStatus(userId: string, reportId: string, status: ReportStatus): Promise<Report> {
  return expectReport(await write('PUT', `/v4/report?${userQuery(userId)}`, { id: reportId, status }));
}

export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
