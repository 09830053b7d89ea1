import { useState } from 'react';
import { Dashboard } from './components/Dashboard';
import { Login } from './components/Login';
import { loadUserId, saveUserId } from './storage';

export function App() {
  const [userId, setUserId] = useState<string | null>(loadUserId);

  const login = (id: string) => {
    saveUserId(id);
    setUserId(id);
  };
  const logout = () => {
    saveUserId(null);
    setUserId(null);
  };

  return (
    <div className="page">
      <header className="page__header">
        <h1>Report status dashboard</h1>
      </header>
      <main>
        {userId ? (
          // keyed: a different user starts from a clean state and a new stream
          <Dashboard key={userId} userId={userId} onLogout={logout} />
        ) : (
          <Login onLogin={login} />
        )}
      </main>
    </div>
  );
}
