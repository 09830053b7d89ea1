/**
 * Pure state of the report table and how live events are applied to it.
 * Applying the same event twice changes nothing (idempotent), so replays and refetches are safe.
 */
import type { Report, ReportStatus } from './types';

export type ReportEvent =
  | { kind: 'created'; report: Report }
  /** `onlyIf`: apply only while the report still has that status (used for our own PUT answers,
   *  which may arrive after a newer live event for the same report). */
  | { kind: 'status'; id: string; status: ReportStatus; onlyIf?: ReportStatus };

export interface ReportsState {
  reports: Report[];
  /** Loaded at least once. */
  loaded: boolean;
  /** Bumped when an event referred to a report we do not know: the hook refetches. */
  refetchToken: number;
}

export type ReportsAction =
  | { type: 'events'; events: ReportEvent[] }
  | { type: 'snapshot'; reports: Report[]; replay: ReportEvent[] };

export const initialReportsState: ReportsState = { reports: [], loaded: false, refetchToken: 0 };

/** Oldest first, like the server's list. Unparsable times sort last; ties keep their order. */
function byCreation(a: Report, b: Report): number {
  const ta = Date.parse(a.createdAt);
  const tb = Date.parse(b.createdAt);
  const na = Number.isNaN(ta) ? Number.POSITIVE_INFINITY : ta;
  const nb = Number.isNaN(tb) ? Number.POSITIVE_INFINITY : tb;
  return na === nb ? 0 : na < nb ? -1 : 1;
}

/** Applies events in order; `unknown` tells whether an update named a report we do not have. */
export function applyEvents(reports: Report[], events: readonly ReportEvent[]): { reports: Report[]; unknown: boolean } {
  let next = reports;
  let unknown = false;
  for (const event of events) {
    if (event.kind === 'created') {
      if (next.some((r) => r.reportId === event.report.reportId)) continue;
      next = [...next, event.report].sort(byCreation);
      continue;
    }
    const index = next.findIndex((r) => r.reportId === event.id);
    const current = index === -1 ? undefined : next[index];
    if (!current) {
      if (event.onlyIf === undefined) unknown = true;
      continue;
    }
    if (current.reportStatus === event.status) continue;
    if (event.onlyIf !== undefined && current.reportStatus !== event.onlyIf) continue;
    next = next.slice();
    next[index] = { ...current, reportStatus: event.status };
  }
  return { reports: next, unknown };
}

export function reportsReducer(state: ReportsState, action: ReportsAction): ReportsState {
  const base = action.type === 'snapshot' ? [...action.reports].sort(byCreation) : state.reports;
  const events = action.type === 'snapshot' ? action.replay : action.events;
  const { reports, unknown } = applyEvents(base, events);
  if (reports === state.reports && !unknown && (action.type !== 'snapshot' || state.loaded)) return state;
  return {
    reports,
    loaded: state.loaded || action.type === 'snapshot',
    refetchToken: unknown ? state.refetchToken + 1 : state.refetchToken,
  };
}
