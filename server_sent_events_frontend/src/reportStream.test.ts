/**
 * The stream shared by a user's tabs, with two or three "tabs" in one page: a fake Web Locks
 * manager (queue, release, steal) and a fake BroadcastChannel stand in for the browser's. The
 * e2e test checks the same in real Chromium tabs.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { openReportStream, type StreamHandlers, type StreamRole, type StreamState } from './reportStream';
import { FakeEventSource, USER } from './test/fakes';

interface Waiter {
  callback: () => unknown;
  resolve: (value: unknown) => void;
  reject: (reason: unknown) => void;
}

/** One lock name's worth of the Web Locks API. */
class FakeLocks {
  private holder: Waiter | null = null;
  private queue: Waiter[] = [];

  request(_name: string, options: LockOptions, callback: () => unknown): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { callback, resolve, reject };
      if (options.steal) {
        const previous = this.holder;
        this.holder = null;
        previous?.reject(new DOMException('stolen', 'AbortError'));
        this.grant(waiter);
        return;
      }
      options.signal?.addEventListener('abort', () => {
        const i = this.queue.indexOf(waiter);
        if (i >= 0) {
          this.queue.splice(i, 1);
          reject(new DOMException('aborted', 'AbortError'));
        }
      });
      if (this.holder) this.queue.push(waiter);
      else this.grant(waiter);
    });
  }

  private grant(waiter: Waiter): void {
    this.holder = waiter;
    void Promise.resolve()
      .then(() => waiter.callback())
      .then((value) => {
        if (this.holder !== waiter) return; // stolen meanwhile
        this.holder = null;
        waiter.resolve(value);
        const next = this.queue.shift();
        if (next) this.grant(next);
      });
  }
}

/** Channels of one page; a muted one sends nothing (its tab hangs). */
class FakeChannel {
  static open: FakeChannel[] = [];
  onmessage: ((e: MessageEvent) => void) | null = null;
  muted = false;
  readonly name: string;
  constructor(name: string) {
    this.name = name;
    FakeChannel.open.push(this);
  }
  postMessage(data: unknown): void {
    if (this.muted) return;
    for (const other of FakeChannel.open) {
      if (other !== this && other.name === this.name) {
        setTimeout(() => other.onmessage?.(new MessageEvent('message', { data })), 0);
      }
    }
  }
  close(): void {
    FakeChannel.open = FakeChannel.open.filter((c) => c !== this);
  }
}

interface Tab {
  role: StreamRole;
  state: StreamState;
  events: string[];
  opens: number;
  close: () => void;
  channel: FakeChannel;
}

/** Every tab a test opened, closed after it (also when it fails). */
let tabs: Tab[] = [];

function openTab(): Tab {
  const tab = { role: 'own', state: 'connecting', events: [], opens: 0 } as unknown as Tab;
  const handlers: StreamHandlers = {
    onState: (s) => (tab.state = s),
    onOpen: () => tab.opens++,
    onEvent: (type, data) => tab.events.push(`${type}:${data}`),
    onExpired: () => undefined,
    onRole: (r) => (tab.role = r),
  };
  const handle = openReportStream(USER, handlers);
  tab.close = handle.close;
  const channel = FakeChannel.open.at(-1);
  if (!channel) throw new Error('no channel opened');
  tab.channel = channel;
  tabs.push(tab);
  return tab;
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeEventSource.install();
  FakeChannel.open = [];
  vi.stubGlobal('BroadcastChannel', FakeChannel);
  Object.defineProperty(navigator, 'locks', { value: new FakeLocks(), configurable: true });
});

afterEach(() => {
  tabs.forEach((t) => t.close());
  tabs = [];
  vi.useRealTimers();
  Reflect.deleteProperty(navigator, 'locks');
});

const settle = () => vi.advanceTimersByTimeAsync(10);

describe('one stream shared by the tabs', () => {
  it('the first tab holds the stream and relays its events; the others open none', async () => {
    const a = openTab();
    const b = openTab();
    const c = openTab();
    await settle();
    expect([a.role, b.role, c.role]).toEqual(['leader', 'follower', 'follower']);
    expect(FakeEventSource.instances).toHaveLength(1);
    const es = FakeEventSource.latest();
    es.open();
    es.emit('report_status_update', { id: 'r1', status: 'queued' }, 'ev-1');
    await settle();
    for (const tab of [a, b, c]) {
      expect(tab.events).toEqual(['report_status_update:{"id":"r1","status":"queued"}']);
      expect(tab.opens).toBe(1);
      expect(tab.state).toBe('open');
    }
    [a, b, c].forEach((t) => t.close());
  });

  it('when the leader closes, the next tab takes over and resumes after the last event', async () => {
    const a = openTab();
    const b = openTab();
    await settle();
    const first = FakeEventSource.latest();
    first.open();
    first.emit('report_created', { reportId: 'r2' }, 'ev-7');
    await settle();
    a.close();
    await settle();
    expect(first.readyState).toBe(FakeEventSource.CLOSED);
    expect(b.role).toBe('leader');
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(FakeEventSource.latest().url).toBe(`/v4/sse?user_id=${USER}&lastEventId=ev-7`);
    b.close();
  });

  it('a leader that goes silent is replaced, and gives way when it comes back', async () => {
    const a = openTab();
    const b = openTab();
    await settle();
    const first = FakeEventSource.latest();
    first.open();
    first.emit('reset', '', 'ev-3');
    await settle();
    a.channel.muted = true; // a hangs: no heartbeat reaches b
    await vi.advanceTimersByTimeAsync(1000);
    expect(b.role).toBe('follower'); // not yet: within its patience
    await vi.advanceTimersByTimeAsync(1000);
    expect(b.role).toBe('leader');
    expect(a.role).toBe('follower');
    expect(first.readyState).toBe(FakeEventSource.CLOSED);
    expect(FakeEventSource.latest().url).toBe(`/v4/sse?user_id=${USER}&lastEventId=ev-3`);
    a.channel.muted = false;
    FakeEventSource.latest().open();
    await vi.advanceTimersByTimeAsync(2000);
    expect([a.role, b.role]).toEqual(['follower', 'leader']);
    expect(FakeEventSource.instances).toHaveLength(2);
    a.close();
    b.close();
  });

  it('a frozen leader lets go at once and follows again on resume', async () => {
    const a = openTab();
    const b = openTab();
    await settle();
    document.dispatchEvent(new Event('freeze'));
    await settle();
    // Both "tabs" share this document: both froze; on resume one of them leads again.
    expect(FakeEventSource.latest().readyState).toBe(FakeEventSource.CLOSED);
    document.dispatchEvent(new Event('resume'));
    await settle();
    expect([a.role, b.role].filter((r) => r === 'leader')).toHaveLength(1);
    expect(FakeEventSource.instances).toHaveLength(2);
    a.close();
    b.close();
  });
});
