import { act, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { App } from './App';
import { reconnectDelayMs } from './hooks/useReportStream';
import { USER_ID_KEY } from './storage';
import { ApiMock, deferred, FakeEventSource, jsonResponse, makeReport, USER } from './test/fakes';

let api: ApiMock;

beforeEach(() => {
  FakeEventSource.install();
  api = new ApiMock().install();
});

afterEach(() => {
  vi.useRealTimers();
});

function row(reportId: string): HTMLElement {
  return screen.getByTestId(`report-row-${reportId}`);
}

function indicator(): string | null {
  return screen.getByTestId('connection-status').getAttribute('data-state');
}

/** Logged in as USER, stream open, first list loaded. */
async function startLoggedIn(): Promise<FakeEventSource> {
  window.localStorage.setItem(USER_ID_KEY, USER);
  render(<App />);
  const es = FakeEventSource.latest();
  expect(es.url).toBe(`/v4/sse?user_id=${USER}`);
  act(() => es.open());
  await waitFor(() => expect(screen.queryByText('Loading reports…')).toBeNull());
  return es;
}

describe('login', () => {
  it('remembers the user across reloads and forgets on log out', async () => {
    const first = render(<App />);
    fireEvent.change(screen.getByLabelText('User ID (UUID)'), { target: { value: USER } });
    fireEvent.click(screen.getByRole('button', { name: 'Log in' }));
    expect(window.localStorage.getItem(USER_ID_KEY)).toBe(USER);
    expect(await screen.findByText(USER)).toBeTruthy();
    first.unmount();

    render(<App />); // a reload
    expect(screen.getByText(USER)).toBeTruthy();
    expect(screen.queryByLabelText('User ID (UUID)')).toBeNull();
    fireEvent.click(screen.getByRole('button', { name: 'Log out' }));
    expect(window.localStorage.getItem(USER_ID_KEY)).toBeNull();
    expect(screen.getByLabelText('User ID (UUID)')).toBeTruthy();
    expect(FakeEventSource.latest().readyState).toBe(FakeEventSource.CLOSED);
  });
});

describe('dashboard', () => {
  it('lists reports, creates one and changes status with the buttons', async () => {
    api.reports = [makeReport('pending', 1)];
    await startLoggedIn();
    expect(row(makeReport('pending', 1).reportId).getAttribute('data-status')).toBe('pending');

    fireEvent.click(screen.getByRole('button', { name: 'Create New Report' }));
    const created = await waitFor(() => {
      const r = api.reports[1];
      if (!r) throw new Error('not created yet');
      return r;
    });
    await waitFor(() => expect(row(created.reportId).getAttribute('data-status')).toBe('pending'));

    fireEvent.click(within(row(created.reportId)).getByRole('button', { name: 'queued' }));
    await waitFor(() => expect(row(created.reportId).getAttribute('data-status')).toBe('queued'));
    expect(within(row(created.reportId)).getAllByRole('button').map((b) => b.textContent)).toEqual(['processing', 'canceled']);
    expect(api.calls.find((c) => c.method === 'PUT')?.body).toEqual({ id: created.reportId, status: 'queued' });
  });

  it('shows a 409 from the server in an alert', async () => {
    const report = makeReport('pending', 1);
    api.reports = [report];
    await startLoggedIn();
    api.override(() =>
      jsonResponse(409, { error: 'invalid transition', currentStatus: 'queued', allowed: ['processing', 'canceled'] }),
    );
    fireEvent.click(within(row(report.reportId)).getByRole('button', { name: 'canceled' }));
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('HTTP 409');
    expect(alert.textContent).toContain('invalid transition');
    expect(alert.textContent).toContain('current status: queued');
    expect(alert.textContent).toContain('allowed: processing, canceled');
    expect(row(report.reportId).getAttribute('data-status')).toBe('pending');
  });

  it('shows a network error in an alert once the retries are spent', async () => {
    await startLoggedIn();
    for (let i = 0; i < 3; i++) api.override(() => Promise.reject(new TypeError('Failed to fetch')));
    fireEvent.click(screen.getByRole('button', { name: 'Create New Report' }));
    expect((await screen.findByRole('alert', {}, { timeout: 3000 })).textContent).toMatch(/Network error/);
    const posts = api.calls.filter((c) => c.method === 'POST');
    expect(posts.length).toBe(3);
    expect(api.reports.length).toBe(0);
  });

  it('sends every write with an Idempotency-Key and retries a lost one with the same key', async () => {
    const report = makeReport('pending', 1);
    api.reports = [report];
    await startLoggedIn();
    api.override(() => Promise.reject(new TypeError('Failed to fetch')));
    fireEvent.click(screen.getByRole('button', { name: 'Create New Report' }));
    await waitFor(() => expect(api.reports.length).toBe(2), { timeout: 3000 });
    const posts = api.calls.filter((c) => c.method === 'POST');
    expect(posts.length).toBe(2);
    expect(posts[0]?.key).toMatch(/^[0-9a-f]{32}$/);
    expect(posts[1]?.key).toBe(posts[0]?.key);

    api.override(() => jsonResponse(503, { error: 'store unavailable' }));
    fireEvent.click(within(row(report.reportId)).getByRole('button', { name: 'queued' }));
    await waitFor(() => expect(row(report.reportId).getAttribute('data-status')).toBe('queued'), { timeout: 3000 });
    const puts = api.calls.filter((c) => c.method === 'PUT');
    expect(puts.length).toBe(2);
    expect(puts[1]?.key).toBe(puts[0]?.key);
    expect(puts[0]?.key).not.toBe(posts[0]?.key);
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('shows a failed list load with a Retry button', async () => {
    api.override(() => jsonResponse(503, { error: 'store unavailable' }));
    window.localStorage.setItem(USER_ID_KEY, USER);
    render(<App />);
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('HTTP 503');
    fireEvent.click(screen.getByRole('button', { name: 'Retry' }));
    await waitFor(() => expect(screen.queryByRole('alert')).toBeNull());
  });
});

describe('live events', () => {
  it('applies report_created once, even when also created locally', async () => {
    const es = await startLoggedIn();
    const report = makeReport('pending', 7);
    act(() => es.emit('report_created', report, '1'));
    act(() => es.emit('report_created', report, '1'));
    expect(screen.getAllByTestId(`report-row-${report.reportId}`)).toHaveLength(1);
    expect(row(report.reportId).getAttribute('data-status')).toBe('pending');
  });

  it('applies report_status_update, and refetches for an unknown report', async () => {
    const a = makeReport('pending', 1);
    api.reports = [a];
    const es = await startLoggedIn();
    act(() => es.emit('report_status_update', { id: a.reportId, status: 'queued' }, '2'));
    expect(row(a.reportId).getAttribute('data-status')).toBe('queued');

    const b = makeReport('processing', 2);
    api.reports = [{ ...a, reportStatus: 'queued' }, b];
    const before = api.listCalls();
    act(() => es.emit('report_status_update', { id: b.reportId, status: 'processing' }, '3'));
    await waitFor(() => expect(row(b.reportId).getAttribute('data-status')).toBe('processing'));
    expect(api.listCalls()).toBe(before + 1);
  });

  it('refetches on reset and on every reopen', async () => {
    const es = await startLoggedIn();
    const a = makeReport('failed', 3);
    api.reports = [a];
    const before = api.listCalls();
    act(() => es.emit('reset', { reason: 'history lost' }));
    await waitFor(() => expect(row(a.reportId).getAttribute('data-status')).toBe('failed'));
    expect(api.listCalls()).toBe(before + 1);

    act(() => es.fail());
    expect(indicator()).toBe('reconnecting');
    api.reports = [{ ...a, reportStatus: 'pending' }];
    act(() => es.open()); // the browser reconnected by itself
    expect(indicator()).toBe('connected');
    await waitFor(() => expect(row(a.reportId).getAttribute('data-status')).toBe('pending'));
    expect(api.listCalls()).toBe(before + 2);
  });

  it('does not let an older refetch overwrite a newer live update', async () => {
    const a = makeReport('pending', 1);
    api.reports = [a];
    const es = await startLoggedIn();
    const slow = deferred<Response>();
    api.override(() => slow.promise); // the refetch below answers late, with old data
    act(() => es.emit('reset', { reason: 'history lost' }));
    act(() => es.emit('report_status_update', { id: a.reportId, status: 'queued' }, '9'));
    expect(row(a.reportId).getAttribute('data-status')).toBe('queued');
    await act(async () => {
      slow.resolve(jsonResponse(200, [a]));
      await slow.promise;
    });
    await waitFor(() => expect(api.listCalls()).toBeGreaterThan(1));
    await act(async () => {
      await new Promise((r) => setTimeout(r, 0));
    });
    expect(row(a.reportId).getAttribute('data-status')).toBe('queued');
  });
});

/** An unsigned JWT-shaped token for `sub` (the server checks signatures; the page does not). */
function fakeToken(sub: string, exp = Math.floor(Date.now() / 1000) + 3600): string {
  const b64 = (v: unknown) => btoa(JSON.stringify(v)).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp })}.signature`;
}

describe('access control (jwt mode)', () => {
  it('logs in with a token, sends it, streams through tickets and returns to the login on auth_expired', async () => {
    api.mode = 'jwt';
    render(<App />);
    const field = await screen.findByLabelText('Access token (JWT)');
    fireEvent.change(field, { target: { value: fakeToken('not-a-uuid') } });
    fireEvent.click(screen.getByRole('button', { name: 'Log in' }));
    expect((await screen.findByRole('alert')).textContent).toContain('not a user ID');

    const token = fakeToken(USER.toUpperCase());
    fireEvent.change(field, { target: { value: token } });
    fireEvent.click(screen.getByRole('button', { name: 'Log in' }));
    expect(await screen.findByText(USER)).toBeTruthy();
    await waitFor(() => expect(FakeEventSource.instances.length).toBe(1));
    const es = FakeEventSource.latest();
    expect(es.url).toBe(`/v4/sse?user_id=${USER}&ticket=ticket-1`);
    act(() => es.open());
    await waitFor(() => expect(screen.queryByText('Loading reports…')).toBeNull());
    const list = api.calls.find((c) => c.path === '/v4/reports');
    expect(list?.authorization).toBe(`Bearer ${token}`);

    // A dropped stream reconnects with a NEW ticket and the last event's id.
    act(() => es.emit('report_created', makeReport('pending', 1), 'ev-1'));
    act(() => es.fail(true));
    await waitFor(() => expect(FakeEventSource.instances.length).toBe(2), { timeout: 3000 });
    expect(FakeEventSource.latest().url).toBe(`/v4/sse?user_id=${USER}&ticket=ticket-2&lastEventId=ev-1`);

    act(() => FakeEventSource.latest().emit('auth_expired', { reason: 'token expired' }));
    expect((await screen.findByRole('status')).textContent).toContain('session expired');
    expect(screen.getByLabelText('Access token (JWT)')).toBeTruthy();
    expect(FakeEventSource.latest().readyState).toBe(FakeEventSource.CLOSED);
  });

  it('returns to the login when the server refuses the token', async () => {
    api.mode = 'jwt';
    render(<App />);
    fireEvent.change(await screen.findByLabelText('Access token (JWT)'), { target: { value: fakeToken(USER) } });
    api.override(() => jsonResponse(401, { error: 'token expired' }));
    fireEvent.click(screen.getByRole('button', { name: 'Log in' }));
    expect(await screen.findByText(/refused the token/)).toBeTruthy();
    expect(screen.getByLabelText('Access token (JWT)')).toBeTruthy();
  });
});

describe('connection indicator', () => {
  it('is reconnecting until open, connected when open', async () => {
    window.localStorage.setItem(USER_ID_KEY, USER);
    render(<App />);
    expect(indicator()).toBe('reconnecting');
    act(() => FakeEventSource.latest().open());
    expect(indicator()).toBe('connected');
    await waitFor(() => expect(screen.queryByText('Loading reports…')).toBeNull());
  });

  it('goes offline when the browser gives up, and reconnects itself with capped backoff', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    window.localStorage.setItem(USER_ID_KEY, USER);
    render(<App />);
    expect(FakeEventSource.instances).toHaveLength(1);

    const delays = [1000, 2000, 4000, 5000, 5000];
    for (const [attempt, delay] of delays.entries()) {
      expect(reconnectDelayMs(attempt)).toBe(delay);
      act(() => FakeEventSource.latest().fail(true));
      expect(indicator()).toBe('offline');
      const count = FakeEventSource.instances.length;
      act(() => {
        vi.advanceTimersByTime(delay - 1);
      });
      expect(FakeEventSource.instances).toHaveLength(count);
      act(() => {
        vi.advanceTimersByTime(1);
      });
      expect(FakeEventSource.instances).toHaveLength(count + 1);
      expect(indicator()).toBe('reconnecting');
    }
    act(() => FakeEventSource.latest().open());
    expect(indicator()).toBe('connected');
    // a successful open resets the backoff
    act(() => FakeEventSource.latest().fail(true));
    const count = FakeEventSource.instances.length;
    act(() => {
        vi.advanceTimersByTime(1000);
      });
    expect(FakeEventSource.instances).toHaveLength(count + 1);
    expect(FakeEventSource.instances.slice(0, -1).every((s) => s.readyState === FakeEventSource.CLOSED)).toBe(true);
  });

  it('is offline while the browser is offline and reconnects when back online', async () => {
    await startLoggedIn();
    const onLine = vi.spyOn(navigator, 'onLine', 'get').mockReturnValue(false);
    act(() => {
      window.dispatchEvent(new Event('offline'));
    });
    expect(indicator()).toBe('offline');
    const closed = FakeEventSource.latest();
    expect(closed.readyState).toBe(FakeEventSource.CLOSED);

    onLine.mockReturnValue(true);
    act(() => {
      window.dispatchEvent(new Event('online'));
    });
    expect(FakeEventSource.latest()).not.toBe(closed);
    expect(indicator()).toBe('reconnecting');
    act(() => FakeEventSource.latest().open());
    expect(indicator()).toBe('connected');
  });
});
