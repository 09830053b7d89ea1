import { ALLOWED_TRANSITIONS, type Report, type ReportStatus } from '../types';
import { StatusCircle } from './StatusCircle';

interface ReportTableProps {
  reports: Report[];
  /** Report ids with a status change in flight; their buttons are disabled meanwhile. */
  busy: ReadonlySet<string>;
  onChangeStatus: (report: Report, status: ReportStatus) => void;
}

function formatCreatedAt(createdAt: string): string {
  const date = new Date(createdAt);
  return Number.isNaN(date.getTime()) ? createdAt : date.toLocaleString();
}

/**
 * One row per report, with a button for each status it may move to next.
 * Below 600 px the CSS turns rows into cards (labels from data-label); the explicit table roles
 * keep the table semantics that some browsers drop when a table's display is changed.
 */
export function ReportTable({ reports, busy, onChangeStatus }: ReportTableProps) {
  if (reports.length === 0) {
    return <p className="empty">No reports yet. Create one to get started.</p>;
  }
  return (
    <div className="table-scroll" role="region" aria-labelledby="reports-caption" tabIndex={0}>
      <table className="reports" role="table">
        <caption id="reports-caption">Your reports (oldest first)</caption>
        <thead>
          <tr role="row">
            <th scope="col" role="columnheader">Status</th>
            <th scope="col" role="columnheader">Report ID</th>
            <th scope="col" role="columnheader">Created</th>
            <th scope="col" role="columnheader">Change status</th>
          </tr>
        </thead>
        <tbody>
          {reports.map((report) => {
            const next = ALLOWED_TRANSITIONS[report.reportStatus];
            const labelId = `report-id-${report.reportId}`;
            return (
              <tr
                key={report.reportId}
                role="row"
                data-testid={`report-row-${report.reportId}`}
                data-status={report.reportStatus}
              >
                <td role="cell" data-label="Status">
                  <span className="status-cell">
                    <StatusCircle status={report.reportStatus} />
                    <span className="status-text">{report.reportStatus}</span>
                  </span>
                </td>
                <td role="cell" data-label="Report ID" className="mono" id={labelId}>
                  {report.reportId}
                </td>
                <td role="cell" data-label="Created">
                  <time dateTime={report.createdAt}>{formatCreatedAt(report.createdAt)}</time>
                </td>
                <td role="cell" data-label="Change status">
                  {next.length === 0 ? (
                    <span className="muted">final</span>
                  ) : (
                    <div className="actions">
                      {next.map((status) => (
                        <button
                          key={status}
                          type="button"
                          className={`button button--small button--${status}`}
                          disabled={busy.has(report.reportId)}
                          aria-describedby={labelId}
                          onClick={() => onChangeStatus(report, status)}
                        >
                          {status}
                        </button>
                      ))}
                    </div>
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}
