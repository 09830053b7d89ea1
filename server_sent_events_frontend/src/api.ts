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

async function request(method: string, path: string, init: { body?: unknown; signal?: AbortSignal } = {}): Promise<unknown> {
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers: init.body === undefined ? { Accept: 'application/json' } : { Accept: 'application/json', 'Content-Type': 'application/json' },
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
    throw new ApiError('http', httpErrorMessage(response.status, body), response.status, body);
  }
  return json;
}

function userQuery(userId: string): string {
  return `user_id=${encodeURIComponent(userId)}`;
}

function expectReport(value: unknown): Report {
  const report = parseReport(value);
  if (!report) throw new ApiError('bad-response', 'The server sent an unexpected response.');
  return report;
}

export function sseUrl(userId: string): string {
  return `/v4/sse?${userQuery(userId)}`;
}

export async function listReports(userId: string, signal?: AbortSignal): Promise<Report[]> {
  const value = await request('GET', `/v4/reports?${userQuery(userId)}`, { signal });
  if (!Array.isArray(value)) throw new ApiError('bad-response', 'The server sent an unexpected response.');
  return value.map(expectReport);
}

export async function createReport(userId: string): Promise<Report> {
  return expectReport(await request('POST', `/v4/new/report?${userQuery(userId)}`));
}

export async function updateReportStatus(userId: string, reportId: string, status: ReportStatus): Promise<Report> {
  return expectReport(await request('PUT', `/v4/report?${userQuery(userId)}`, { body: { id: reportId, status } }));
}

export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
