/**
 * Keeps one user's report list in sync with the server: an initial fetch, live events of the
 * stream this browser's tabs share (`/v4/sse`, see `reportStream.ts`), a refetch on every
 * (re)open and on `reset`.
 */
import { useCallback, useEffect, useReducer, useRef, useState } from 'react';
import { errorMessage, listReports } from '../api';
import { initialReportsState, reportsReducer, type ReportEvent } from '../reportsState';
import { openReportStream, type StreamEventType, type StreamRole, type StreamState } from '../reportStream';
import { parseJson, parseReport, parseStatusUpdate, type Report } from '../types';

export type ConnectionState = 'connected' | 'reconnecting' | 'offline';

export { reconnectDelayMs } from '../reportStream';

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
  /** Whether this tab holds the stream (`own`, `leader`) or hears it from another tab. */
  role: StreamRole;
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
  const [role, setRole] = useState<StreamRole>('own');
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
    const handleOnline = () => setOnline(true);
    const handleOffline = () => setOnline(false);
    window.addEventListener('online', handleOnline);
    window.addEventListener('offline', handleOffline);
    return () => {
      window.removeEventListener('online', handleOnline);
      window.removeEventListener('offline', handleOffline);
    };
  }, []);

  useEffect(() => {
    const onEvent = (type: StreamEventType, data: string) => {
      if (type === 'reset') {
        refetch();
        return;
      }
      if (type === 'report_created') {
        const report = parseReport(parseJson(data));
        if (report) applyEvents([{ kind: 'created', report }]);
        else refetch();
        return;
      }
      const update = parseStatusUpdate(parseJson(data));
      if (update) applyEvents([{ kind: 'status', id: update.id, status: update.status }]);
      else refetch();
    };
    const stream = openReportStream(userId, {
      onState: setStream,
      onOpen: refetch,
      onEvent,
      onExpired: () => onExpired?.('Your session expired. Log in again with a new token.'),
      onRole: setRole,
    });
    return () => stream.close();
  }, [userId, refetch, applyEvents, onExpired]);

  const connection: ConnectionState =
    !online || stream === 'closed' ? 'offline' : stream === 'open' ? 'connected' : 'reconnecting';

  return {
    reports: state.reports,
    loaded: state.loaded,
    connection,
    role,
    loadError,
    refetch,
    applyLocal: (event) => applyEvents([event]),
  };
}
