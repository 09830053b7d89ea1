/**
 * The live stream of one user's report events, shared by every tab of that user in this
 * browser: the tabs elect one leader (Web Locks API), which owns the EventSource and relays
 * what it receives to the others (BroadcastChannel). So however many tabs are open, the
 * browser holds one stream, not one per tab (over HTTP/1.1 a browser has only 6 connections
 * per origin, and the 7th tab's stream and requests would wait for a free one).
 *
 * When the leader tab closes, its lock is released and the next tab takes over at once; when it
 * freezes, it lets go of the lock first; when it hangs, the others stop hearing its heartbeat
 * and one of them takes the lock from it (`steal`). The new leader resumes with the id of the
 * last event the tabs saw, so nothing is lost. Without Web Locks or BroadcastChannel (an
 * insecure context, an old browser), each tab holds its own stream.
 */
import { hasSession, sseUrl, ticketedSseUrl } from './api';

export type StreamState = 'connecting' | 'open' | 'closed';
export type StreamEventType = 'report_created' | 'report_status_update' | 'reset';
export type StreamRole = 'own' | 'leader' | 'follower';

/** What a tab hears of the stream, whoever holds it. */
export interface StreamHandlers {
  onState: (state: StreamState) => void;
  /** The stream (re)opened: what it could not replay must be fetched. */
  onOpen: () => void;
  onEvent: (type: StreamEventType, data: string) => void;
  /** This tab's session ended (`auth_expired`): its own stream is closed. */
  onExpired: () => void;
  /** Whether this tab holds the stream (for the indicator and tests). */
  onRole?: (role: StreamRole) => void;
}

export interface ReportStreamHandle {
  close: () => void;
}

/** Delay before our own reconnect attempt number `attempt` (0-based): 1 s, 2 s, 4 s, then 5 s. */
export function reconnectDelayMs(attempt: number): number {
  return Math.min(1000 * 2 ** attempt, 5000);
}

/** How often the leader says it is alive, and how long the others wait before taking over. */
export const HEARTBEAT_MS = 500;
export const LEADER_TIMEOUT_MS = 1000;

const EVENT_TYPES: StreamEventType[] = ['report_created', 'report_status_update', 'reset'];

function currentlyOnline(): boolean {
  return typeof navigator === 'undefined' || navigator.onLine;
}

function sharingAvailable(): boolean {
  return (
    typeof navigator !== 'undefined' &&
    // Web Locks exist only in secure contexts (https, or http on localhost).
    'locks' in navigator &&
    typeof (navigator.locks as Partial<LockManager> | undefined)?.request === 'function' &&
    typeof BroadcastChannel !== 'undefined'
  );
}

/** Opens `userId`'s stream: shared between tabs when the browser can, else this tab's own. */
export function openReportStream(userId: string, handlers: StreamHandlers): ReportStreamHandle {
  if (sharingAvailable()) return openShared(userId, handlers);
  handlers.onRole?.('own');
  const own = openOwn(userId, null, handlers);
  return { close: () => own.close() };
}

interface OwnStream {
  close: () => void;
  state: () => StreamState;
}

/**
 * This tab's EventSource, with a fresh ticket per connection when there is a session, our own
 * reconnect with capped backoff once the browser gives up, and a pause while offline.
 * `resumeFrom` is the id of the last event already seen elsewhere (a tab that led before).
 */
function openOwn(
  userId: string,
  resumeFrom: string | null,
  handlers: StreamHandlers & { onEventId?: (id: string) => void },
): OwnStream {
  let source: EventSource | null = null;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let attempt = 0;
  let disposed = false;
  let lastEventId = resumeFrom;
  let state: StreamState = 'connecting';

  const setState = (next: StreamState) => {
    state = next;
    handlers.onState(next);
  };
  const listeners = EVENT_TYPES.map((type) => {
    const listener = (e: MessageEvent<string>) => {
      if (e.lastEventId) {
        lastEventId = e.lastEventId;
        handlers.onEventId?.(e.lastEventId);
      }
      handlers.onEvent(type, e.data);
    };
    return [type, listener] as const;
  });
  const onAuthExpired = () => {
    closeSource();
    disposed = true;
    setState('closed');
    handlers.onExpired();
  };

  const closeSource = () => {
    if (!source) return;
    for (const [type, listener] of listeners) source.removeEventListener(type, listener);
    source.removeEventListener('auth_expired', onAuthExpired);
    source.onopen = null;
    source.onerror = null;
    source.close();
    source = null;
  };

  const retry = () => {
    setState('closed');
    retryTimer = setTimeout(connect, reconnectDelayMs(attempt));
    attempt++;
  };

  const connect = () => {
    retryTimer = undefined;
    if (disposed) return;
    if (!currentlyOnline()) {
      setState('closed');
      return; // the `online` listener reconnects
    }
    setState('connecting');
    if (!hasSession()) {
      open(sseUrl(userId, lastEventId));
      return;
    }
    // A ticket per connection: the browser's own reconnects reuse the URL, whose ticket is
    // spent, so they fail and this retries with a new one (and the last event's id).
    ticketedSseUrl(userId, lastEventId).then(
      (url) => {
        if (!disposed) open(url);
      },
      () => {
        if (!disposed) retry();
      },
    );
  };

  const open = (url: string) => {
    const es = new EventSource(url);
    source = es;
    es.onopen = () => {
      attempt = 0;
      setState('open');
      handlers.onOpen(); // nothing is missed, even when the server could not replay
    };
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. a non-200 answer): retry ourselves with capped backoff.
        closeSource();
        retry();
      } else {
        setState('connecting'); // the browser reconnects by itself, with Last-Event-ID
      }
    };
    for (const [type, listener] of listeners) es.addEventListener(type, listener);
    es.addEventListener('auth_expired', onAuthExpired);
  };

  const handleOnline = () => {
    if (!source && !disposed) {
      clearTimeout(retryTimer);
      attempt = 0;
      connect();
    }
  };
  const handleOffline = () => {
    clearTimeout(retryTimer);
    retryTimer = undefined;
    closeSource();
    setState('closed');
  };

  window.addEventListener('online', handleOnline);
  window.addEventListener('offline', handleOffline);
  connect();

  return {
    close: () => {
      disposed = true;
      window.removeEventListener('online', handleOnline);
      window.removeEventListener('offline', handleOffline);
      clearTimeout(retryTimer);
      closeSource();
    },
    state: () => state,
  };
}

/** What tabs tell each other on the channel. */
type Message =
  | { kind: 'event'; type: StreamEventType; data: string; id: string }
  | { kind: 'open' }
  | { kind: 'beat'; state: StreamState; id: string | null }
  | { kind: 'hello' };

function openShared(userId: string, handlers: StreamHandlers): ReportStreamHandle {
  const name = `sse-dashboard.stream:${userId}`;
  const channel = new BroadcastChannel(name);
  let disposed = false;
  let frozen = false;
  let expired = false;
  let lastEventId: string | null = null;
  let lastHeard = Date.now();
  /** Spread the followers' take-overs, so one of them usually wins alone. */
  const patience = LEADER_TIMEOUT_MS + Math.floor(Math.random() * 300);
  /** While leading: our stream, the heartbeat, how to give the lock back, and which request holds it. */
  let leading: {
    own: OwnStream;
    beat: ReturnType<typeof setInterval>;
    release: () => void;
    request: AbortController;
  } | null = null;
  /** The lock request in flight (queued, or granted and not yet leading). */
  let waiting: AbortController | null = null;

  const post = (message: Message) => {
    try {
      channel.postMessage(message);
    } catch {
      // The channel is closed (the tab is going away).
    }
  };
  const active = () => !disposed && !frozen && !expired;

  const lead = (request: AbortController, release: () => void) => {
    handlers.onRole?.('leader');
    const own = openOwn(userId, lastEventId, {
      onState: (state) => {
        handlers.onState(state);
        post({ kind: 'beat', state, id: lastEventId });
      },
      onOpen: () => {
        handlers.onOpen();
        post({ kind: 'open' });
      },
      onEvent: (type, data) => {
        handlers.onEvent(type, data);
        post({ kind: 'event', type, data, id: lastEventId ?? '' });
      },
      onEventId: (id) => {
        lastEventId = id;
      },
      onExpired: () => {
        // This tab's session ended; another tab (with its own session) may take over.
        expired = true;
        stopLeading();
        handlers.onExpired();
      },
    });
    const beat = setInterval(() => post({ kind: 'beat', state: own.state(), id: lastEventId }), HEARTBEAT_MS);
    leading = { own, beat, release, request };
  };

  /** Closes our stream; `release`s the lock unless it was taken from us. */
  const stopLeading = (release = true) => {
    if (!leading) return;
    const current = leading;
    leading = null;
    clearInterval(current.beat);
    current.own.close();
    if (release) current.release();
  };

  /** Queues for the lock, or takes it from a leader that went silent (`steal`). */
  const requestLock = (steal: boolean) => {
    if (!active() || leading || waiting) return;
    const request = new AbortController();
    waiting = request;
    const options: LockOptions = steal ? { steal: true } : { signal: request.signal };
    const ended = () => {
      if (waiting === request) waiting = null;
      // Taken from us (a tab stopped hearing us): our stream goes, we follow again.
      if (leading?.request === request) stopLeading(false);
      if (active() && !leading && !waiting) {
        handlers.onRole?.('follower');
        lastHeard = Date.now();
        requestLock(false);
      }
    };
    navigator.locks
      .request(name, options, () => {
        if (waiting !== request) return undefined; // we stopped waiting meanwhile
        waiting = null;
        if (!active()) return undefined;
        return new Promise<void>((release) => lead(request, release));
      })
      .then(ended, ended);
  };

  const takeOver = () => {
    const queued = waiting;
    waiting = null;
    queued?.abort();
    handlers.onState('connecting');
    requestLock(true);
  };

  channel.onmessage = (e: MessageEvent<Message>) => {
    const message = e.data;
    if (leading) {
      // Another tab just opened: tell it where the stream is.
      if (message.kind === 'hello') post({ kind: 'beat', state: leading.own.state(), id: lastEventId });
      return;
    }
    lastHeard = Date.now();
    switch (message.kind) {
      case 'event':
        if (message.id) lastEventId = message.id;
        handlers.onEvent(message.type, message.data);
        break;
      case 'open':
        handlers.onOpen();
        break;
      case 'beat':
        if (message.id) lastEventId = message.id;
        handlers.onState(message.state);
        break;
      case 'hello':
        break;
    }
  };

  // A follower that hears no leader for a while takes over (the leader hung).
  const watchdog = setInterval(() => {
    if (active() && !leading && Date.now() - lastHeard > patience) takeOver();
  }, HEARTBEAT_MS / 2);

  // A frozen tab cannot serve the others: it lets go first and comes back as a follower.
  const onFreeze = () => {
    frozen = true;
    stopLeading();
    const queued = waiting;
    waiting = null;
    queued?.abort();
  };
  const onResume = () => {
    if (!frozen) return;
    frozen = false;
    lastHeard = Date.now();
    handlers.onRole?.('follower');
    handlers.onOpen(); // what was relayed while this tab was frozen: fetch the list again
    requestLock(false);
  };
  document.addEventListener('freeze', onFreeze);
  document.addEventListener('resume', onResume);

  handlers.onRole?.('follower');
  handlers.onState('connecting');
  requestLock(false);
  post({ kind: 'hello' });

  return {
    close: () => {
      disposed = true;
      clearInterval(watchdog);
      document.removeEventListener('freeze', onFreeze);
      document.removeEventListener('resume', onResume);
      stopLeading();
      const queued = waiting;
      waiting = null;
      queued?.abort();
      channel.close();
    },
  };
}
