/**
 * Test doubles for unit tests only: a controllable EventSource and an in-memory /v4 API behind
 * a mocked fetch. The e2e test uses the real server instead.
 */
import { vi } from 'vitest';
import type { Report, ReportStatus } from '../types';

export class FakeEventSource extends EventTarget {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSED = 2;
  static instances: FakeEventSource[] = [];

  readonly url: string;
  readyState: number = FakeEventSource.CONNECTING;
  onopen: ((ev: Event) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;

  constructor(url: string | URL) {
    super();
    this.url = String(url);
    FakeEventSource.instances.push(this);
  }

  static latest(): FakeEventSource {
    const last = FakeEventSource.instances.at(-1);
    if (!last) throw new Error('no EventSource was created');
    return last;
  }

  static install(): void {
    FakeEventSource.instances = [];
    vi.stubGlobal('EventSource', FakeEventSource);
  }

  close(): void {
    this.readyState = FakeEventSource.CLOSED;
  }

  /** Server accepted the stream. */
  open(): void {
    this.readyState = FakeEventSource.OPEN;
    this.onopen?.(new Event('open'));
  }

  /** Connection lost; `giveUp` = the browser will not retry (readyState CLOSED). */
  fail(giveUp = false): void {
    this.readyState = giveUp ? FakeEventSource.CLOSED : FakeEventSource.CONNECTING;
    this.onerror?.(new Event('error'));
  }

  emit(type: string, data: unknown, lastEventId = ''): void {
    const text = typeof data === 'string' ? data : JSON.stringify(data);
    this.dispatchEvent(new MessageEvent(type, { data: text, lastEventId }));
  }
}

export function makeReport(status: ReportStatus, n: number, userId = USER): Report {
  return {
    userId,
    reportId: `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`,
    reportStatus: status,
    createdAt: new Date(Date.UTC(2026, 10, 22, 4, 30, n)).toISOString(),
  };
}

export const USER = '11111111-2222-4333-8444-555555555555';

export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
}

export function deferred<T>(): Deferred<T> {
  let resolve: (value: T) => void = () => undefined;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

export function jsonResponse(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json' },
  });
}

type Handler = (method: string, url: URL, body: unknown) => Promise<Response> | Response;

/** An in-memory server; `override` lets a test answer one request differently. */
export class ApiMock {
  reports: Report[] = [];
  calls: { method: string; path: string; body: unknown; key: string | null; authorization: string | null }[] = [];
  /** What `GET /auth/config` says. */
  mode: 'none' | 'jwt' = 'none';
  private tickets = 0;
  private overrides: Handler[] = [];
  private next = 100;

  install(): this {
    vi.stubGlobal('fetch', vi.fn((input: RequestInfo | URL, init?: RequestInit) => this.handle(input, init)));
    return this;
  }

  /** The next request is answered by `handler` (once). */
  override(handler: Handler): void {
    this.overrides.push(handler);
  }

  listCalls(): number {
    return this.calls.filter((c) => c.method === 'GET' && c.path === '/v4/reports').length;
  }

  private async handle(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
    const url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url, 'http://localhost');
    const method = init?.method ?? 'GET';
    const body: unknown = typeof init?.body === 'string' ? JSON.parse(init.body) : undefined;
    const headers = new Headers(init?.headers);
    const key = headers.get('Idempotency-Key');
    const authorization = headers.get('Authorization');
    this.calls.push({ method, path: url.pathname, body, key, authorization });
    const override = this.overrides.shift();
    if (override) return override(method, url, body);
    await Promise.resolve();
    if (method === 'GET' && url.pathname === '/auth/config') {
      return jsonResponse(200, { mode: this.mode });
    }
    if (method === 'POST' && url.pathname === '/auth/ticket') {
      if (!authorization) return jsonResponse(401, { error: 'authentication required' });
      this.tickets++;
      return jsonResponse(200, { ticket: `ticket-${this.tickets}`, expiresIn: 30 });
    }
    if (method === 'GET' && url.pathname === '/v4/reports') {
      return jsonResponse(200, this.reports.map((r) => ({ ...r })));
    }
    if (method === 'POST' && url.pathname === '/v4/new/report') {
      const report = makeReport('pending', this.next++, url.searchParams.get('user_id') ?? '');
      this.reports.push(report);
      return jsonResponse(201, report);
    }
    if (method === 'PUT' && url.pathname === '/v4/report') {
      const { id, status } = body as { id: string; status: ReportStatus };
      const report = this.reports.find((r) => r.reportId === id);
      if (!report) return jsonResponse(404, { error: 'report not found' });
      report.reportStatus = status;
      return jsonResponse(200, { ...report });
    }
    return jsonResponse(404, { error: 'no route' });
  }
}
