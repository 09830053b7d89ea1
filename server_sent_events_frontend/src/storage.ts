/** Remembers the logged-in user across reloads. Storage may be unavailable (privacy modes). */
import { isUuid } from './types';

export const USER_ID_KEY = 'sse-dashboard.userId';

export function loadUserId(): string | null {
  try {
    const value = window.localStorage.getItem(USER_ID_KEY);
    return value && isUuid(value) ? value : null;
  } catch {
    return null;
  }
}

export function saveUserId(userId: string | null): void {
  try {
    if (userId === null) window.localStorage.removeItem(USER_ID_KEY);
    else window.localStorage.setItem(USER_ID_KEY, userId);
  } catch {
    // Not remembered; the session still works.
  }
}

export const TOKEN_KEY = 'sse-dashboard.token';

/** The session's token, kept for this tab only (sessionStorage), or null. */
export function loadToken(): string | null {
  try {
    return window.sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function saveToken(token: string | null): void {
  try {
    if (token === null) window.sessionStorage.removeItem(TOKEN_KEY);
    else window.sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Not remembered; the session still works until a reload.
  }
}
