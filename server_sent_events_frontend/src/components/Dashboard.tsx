import { useState } from 'react';
import { createReport, errorMessage, updateReportStatus } from '../api';
import { useReportStream } from '../hooks/useReportStream';
import type { Report, ReportStatus } from '../types';
import { ConnectionIndicator } from './ConnectionIndicator';
import { ReportTable } from './ReportTable';

interface DashboardProps {
  userId: string;
  onLogout: () => void;
  /** Called when the server ends the stream because the session's token expired. */
  onExpired?: (message: string) => void;
}

/** The logged-in view: connection state, create button, errors and the live report table. */
export function Dashboard({ userId, onLogout, onExpired }: DashboardProps) {
  const { reports, loaded, connection, role, loadError, refetch, applyLocal } = useReportStream(userId, onExpired);
  const [actionError, setActionError] = useState<string | null>(null);
  const [creating, setCreating] = useState(false);
  const [busy, setBusy] = useState<ReadonlySet<string>>(new Set());

  const create = async () => {
    setCreating(true);
    setActionError(null);
    try {
      const report = await createReport(userId);
      applyLocal({ kind: 'created', report });
    } catch (err) {
      setActionError(`Could not create a report. ${errorMessage(err)}`);
    } finally {
      setCreating(false);
    }
  };

  const changeStatus = async (report: Report, status: ReportStatus) => {
    const id = report.reportId;
    setBusy((prev) => new Set(prev).add(id));
    setActionError(null);
    try {
      const updated = await updateReportStatus(userId, id, status);
      applyLocal({ kind: 'status', id, status: updated.reportStatus, onlyIf: report.reportStatus });
    } catch (err) {
      setActionError(`Could not change report ${id} to "${status}". ${errorMessage(err)}`);
    } finally {
      setBusy((prev) => {
        const next = new Set(prev);
        next.delete(id);
        return next;
      });
    }
  };

  return (
    <>
      <section className="toolbar" aria-label="Session">
        <p className="user">
          Logged in as <span className="mono">{userId}</span>
        </p>
        <ConnectionIndicator state={connection} role={role} />
        <button type="button" className="button button--secondary" onClick={onLogout}>
          Log out
        </button>
      </section>

      <section className="card" aria-labelledby="reports-heading">
        <div className="card__head">
          <h2 id="reports-heading">Reports</h2>
          <button type="button" className="button" onClick={() => void create()} disabled={creating}>
            Create New Report
          </button>
        </div>

        {actionError && (
          <div className="alert">
            <span role="alert">{actionError}</span>
            <button type="button" className="button button--small button--secondary" onClick={() => setActionError(null)}>
              Dismiss
            </button>
          </div>
        )}
        {loadError && (
          <div className="alert">
            <span role="alert">{loadError}</span>
            <button type="button" className="button button--small button--secondary" onClick={refetch}>
              Retry
            </button>
          </div>
        )}

        {loaded ? (
          <ReportTable reports={reports} busy={busy} onChangeStatus={(r, s) => void changeStatus(r, s)} />
        ) : (
          !loadError && <p className="muted">Loading reports…</p>
        )}
      </section>
    </>
  );
}
