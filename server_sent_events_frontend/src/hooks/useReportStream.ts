/**
 * Keeps one user's report list in sync with the server: an initial fetch, live events over
 * EventSource (`/v4/sse`), a refetch on every (re)open and on `reset`, and our own reconnect
 * with capped backoff once the browser gives up (EventSource CLOSED).
 */
import { useCallback, useEffect, useReducer, useRef, useState } from 'react';
import { errorMessage, hasSession, listReports, sseUrl, ticketedSseUrl } from '../api';
import { initialReportsState, reportsReducer, type ReportEvent } from '../reportsState';
import { parseJson, parseReport, parseStatusUpdate, type Report } from '../types';

export type ConnectionState = 'connected' | 'reconnecting' | 'offline';

/** Delay before our own reconnect attempt number `attempt` (0-based): 1 s, 2 s, 4 s, then 5 s. */
export function reconnectDelayMs(attempt: number): number {
  return Math.min(1000 * 2 ** attempt, 5000);
}

type StreamState = 'connecting' | 'open' | 'closed';

interface FetchTracker {
  generation: number;
  controller: AbortController | null;
  /** Events seen since the in-flight fetch started; re-applied on top of its (older) result. */
  buffer: ReportEvent[];
}

export interface ReportStream {
  reports: Report[];
  loaded: boolean;
  connection: ConnectionState;
  /** Why the last list fetch failed, or null. */
  loadError: string | null;
  refetch: () => void;
  /** Applies the result of our own request (same rules as a live event). */
  applyLocal: (event: ReportEvent) => void;
}

function currentlyOnline(): boolean {
  return typeof navigator === 'undefined' || navigator.onLine;
}

/**
 * `onExpired` is called when the server ends the stream because the session's token expired
 * (`auth_expired`); with a token, every (re)connect uses a fresh ticket.
 */
export function useReportStream(userId: string, onExpired?: (message: string) => void): ReportStream {
  const [state, dispatch] = useReducer(reportsReducer, initialReportsState);
  const [stream, setStream] = useState<StreamState>('connecting');
  const [online, setOnline] = useState(currentlyOnline);
  const [loadError, setLoadError] = useState<string | null>(null);
  const tracker = useRef<FetchTracker>({ generation: 0, controller: null, buffer: [] });

  const applyEvents = useCallback((events: ReportEvent[]) => {
    const t = tracker.current;
    if (t.controller) t.buffer.push(...events);
    dispatch({ type: 'events', events });
  }, []);

  const refetch = useCallback(() => {
    const t = tracker.current;
    t.controller?.abort();
    const controller = new AbortController();
    const generation = ++t.generation;
    t.controller = controller;
    t.buffer = [];
    listReports(userId, controller.signal).then(
      (reports) => {
        if (t.generation !== generation) return; // a newer fetch superseded this one
        const replay = t.buffer;
        t.controller = null;
        t.buffer = [];
        dispatch({ type: 'snapshot', reports, replay });
        setLoadError(null);
      },
      (err: unknown) => {
        if (t.generation !== generation) return;
        t.controller = null;
        t.buffer = [];
        setLoadError(`Could not load reports. ${errorMessage(err)}`);
      },
    );
  }, [userId]);

  // Load at once, without waiting for the stream to open (it refetches when it does).
  useEffect(() => {
    refetch();
  }, [refetch]);

  // An update for a report we do not have: the list is incomplete, fetch it again.
  useEffect(() => {
    if (state.refetchToken > 0) refetch();
  }, [state.refetchToken, refetch]);

  // Abort an in-flight fetch when the user changes or the component goes away.
  useEffect(() => {
    const t = tracker.current;
    return () => {
      t.generation++;
      t.controller?.abort();
      t.controller = null;
      t.buffer = [];
    };
  }, [userId]);

  useEffect(() => {
    let source: EventSource | null = null;
    let retryTimer: ReturnType<typeof setTimeout> | undefined;
    let attempt = 0;
    let disposed = false;
    let lastEventId: string | null = null;

    const onCreated = (e: MessageEvent<string>) => {
      if (e.lastEventId) lastEventId = e.lastEventId;
      const report = parseReport(parseJson(e.data));
      if (report) applyEvents([{ kind: 'created', report }]);
      else refetch();
    };
    const onStatus = (e: MessageEvent<string>) => {
      if (e.lastEventId) lastEventId = e.lastEventId;
      const update = parseStatusUpdate(parseJson(e.data));
      if (update) applyEvents([{ kind: 'status', id: update.id, status: update.status }]);
      else refetch();
    };
    const onReset = () => refetch();
    const onAuthExpired = () => {
      closeSource();
      setStream('closed');
      disposed = true;
      onExpired?.('Your session expired. Log in again with a new token.');
    };

    const closeSource = () => {
      if (!source) return;
      source.removeEventListener('report_created', onCreated);
      source.removeEventListener('report_status_update', onStatus);
      source.removeEventListener('reset', onReset);
      source.removeEventListener('auth_expired', onAuthExpired);
      source.onopen = null;
      source.onerror = null;
      source.close();
      source = null;
    };

    const connect = () => {
      retryTimer = undefined;
      if (disposed) return;
      if (!currentlyOnline()) {
        setStream('closed');
        return; // the `online` listener reconnects
      }
      setStream('connecting');
      if (!hasSession()) {
        open(sseUrl(userId));
        return;
      }
      // A ticket per connection: the browser's own reconnects reuse the URL, whose ticket is
      // spent, so they fail and this retries with a new one (and the last event's id).
      ticketedSseUrl(userId, lastEventId).then(
        (url) => {
          if (!disposed) open(url);
        },
        () => {
          if (disposed) return;
          setStream('closed');
          retryTimer = setTimeout(connect, reconnectDelayMs(attempt));
          attempt++;
        },
      );
    };

    const open = (url: string) => {
      const es = new EventSource(url);
      source = es;
      es.onopen = () => {
        attempt = 0;
        setStream('open');
        refetch(); // nothing is missed, even when the server could not replay
      };
      es.onerror = () => {
        if (es.readyState === EventSource.CLOSED) {
          // The browser gave up (e.g. a non-200 answer): retry ourselves with capped backoff.
          closeSource();
          setStream('closed');
          retryTimer = setTimeout(connect, reconnectDelayMs(attempt));
          attempt++;
        } else {
          setStream('connecting'); // the browser reconnects by itself, with Last-Event-ID
        }
      };
      es.addEventListener('report_created', onCreated);
      es.addEventListener('report_status_update', onStatus);
      es.addEventListener('reset', onReset);
      es.addEventListener('auth_expired', onAuthExpired);
    };

    const handleOnline = () => {
      setOnline(true);
      if (!source && !disposed) {
        clearTimeout(retryTimer);
        attempt = 0;
        connect();
      }
    };
    const handleOffline = () => {
      setOnline(false);
      clearTimeout(retryTimer);
      retryTimer = undefined;
      closeSource();
      setStream('closed');
    };

    window.addEventListener('online', handleOnline);
    window.addEventListener('offline', handleOffline);
    connect();

    return () => {
      disposed = true;
      window.removeEventListener('online', handleOnline);
      window.removeEventListener('offline', handleOffline);
      clearTimeout(retryTimer);
      closeSource();
    };
  }, [userId, refetch, applyEvents, onExpired]);

  const connection: ConnectionState =
    !online || stream === 'closed' ? 'offline' : stream === 'open' ? 'connected' : 'reconnecting';

  return {
    reports: state.reports,
    loaded: state.loaded,
    connection,
    loadError,
    refetch,
    applyLocal: (event) => applyEvents([event]),
  };
}
