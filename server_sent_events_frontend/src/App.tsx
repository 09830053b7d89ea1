import { useCallback, useEffect, useState } from 'react';
import { fetchAuthMode, setSession, type AuthMode } from './api';
import { Dashboard } from './components/Dashboard';
import { Login } from './components/Login';
import { TokenLogin } from './components/TokenLogin';
import { loadToken, loadUserId, saveToken, saveUserId } from './storage';
import { tokenClaims } from './types';

interface Session {
  userId: string;
  /** The bearer token, with access control on; null on an open server. */
  token: string | null;
}

function restoredSession(): Session | null {
  const token = loadToken();
  const sub = token ? tokenClaims(token)?.sub.toLowerCase() : undefined;
  if (token && sub) return { userId: sub, token };
  const userId = loadUserId();
  return userId ? { userId, token: null } : null;
}

export function App() {
  const [mode, setMode] = useState<AuthMode>('none');
  const [session, setSessionState] = useState<Session | null>(() => {
    const restored = restoredSession();
    setSession(restored?.token ?? null);
    return restored;
  });
  const [notice, setNotice] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    void fetchAuthMode().then((m) => {
      if (live) setMode(m);
    });
    return () => {
      live = false;
    };
  }, []);

  const logout = useCallback((why: string | null = null) => {
    setSession(null);
    saveToken(null);
    saveUserId(null);
    setNotice(why);
    setSessionState(null);
  }, []);

  const expired = useCallback((why: string) => logout(why), [logout]);

  const login = (next: Session) => {
    if (next.token) {
      saveToken(next.token);
      setSession(next.token, () => expired('The server refused the token (expired or revoked). Log in again.'));
    } else {
      saveUserId(next.userId);
      setSession(null);
    }
    setNotice(null);
    setSessionState(next);
  };

  // A restored token session: a 401 from then on returns to the login too.
  useEffect(() => {
    if (session?.token) {
      setSession(session.token, () => expired('The server refused the token (expired or revoked). Log in again.'));
    }
  }, [session, expired]);

  let body;
  if (session && (mode === 'jwt') === (session.token !== null)) {
    // keyed: a different user starts from a clean state and a new stream
    body = (
      <Dashboard
        key={session.userId}
        userId={session.userId}
        onLogout={() => logout()}
        onExpired={session.token ? expired : undefined}
      />
    );
  } else if (mode === 'jwt') {
    body = <TokenLogin notice={notice} onLogin={login} />;
  } else {
    body = <Login onLogin={(userId) => login({ userId, token: null })} />;
  }

  return (
    <div className="page">
      <header className="page__header">
        <h1>Report status dashboard</h1>
      </header>
      <main>{body}</main>
    </div>
  );
}
