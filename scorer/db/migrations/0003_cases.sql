-- 0003: the analysts' console (scorer/console/, docs/console.md): cases, what joined them, notes, verdicts,
-- the append-only audit log, and the console's accounts, sessions and API tokens.
--
-- A case is a card: case_id is the customer id. The store opens and feeds cases itself: every alerted
-- decision it writes (action review or decline, the model's or a rule's, except the rules verdicts made)
-- joins the card's case through the trigger below, in the store's own transaction, so a case holds exactly the alerts the decisions table
-- holds (a replay of a decision joins nothing twice: case_alerts is keyed by transaction).
-- Times a person waits on (opened_at, last_alert_at, closed_at) are the database's clock when the alert
-- arrived, not the transaction's event time: an SLA is about how long a card waited for an analyst.

create table cases (
    case_id text primary key,  -- the customer id
    status text not null check (status in ('open', 'in_review', 'closed', 'reopened')),
    outcome text check (outcome in ('fraud', 'genuine', 'inconclusive')),  -- of the last verdict
    assigned_to text,
    episode integer not null default 1,  -- 1 when opened, +1 each time an alert reopens it
    opened_at timestamptz not null,  -- of the current episode
    last_alert_at timestamptz not null,
    closed_at timestamptz,
    alerts integer not null default 0,  -- of the current episode
    max_score double precision not null default 0,
    amount_at_risk double precision not null default 0,
    updated_at timestamptz not null default now()
);
create index cases_open on cases (opened_at) where status <> 'closed';  -- the queue
create index cases_assigned on cases (assigned_to) where status <> 'closed';

create table case_alerts (
    transaction_id text primary key,
    case_id text not null references cases (case_id),
    episode integer not null,
    event_day date not null,  -- finds the decision's row in its partition
    event_time timestamptz not null,
    terminal_id text not null,
    amount double precision not null,
    score double precision not null,
    action text not null,
    rule_id text,
    model_version text not null,
    alerted_at timestamptz not null default now()
);
create index case_alerts_case on case_alerts (case_id, episode);
create index case_alerts_terminal on case_alerts (terminal_id, event_time);  -- a terminal's other alerts

create table case_notes (
    id bigserial primary key,
    case_id text not null references cases (case_id),
    author text not null,
    at timestamptz not null default now(),
    text text not null check (length(text) between 1 and 4000)
);
create index case_notes_case on case_notes (case_id, at);

-- What each verdict labelled: a reversal (a later verdict on the same case) publishes the correction of
-- exactly these transactions, and an inconclusive verdict withdraws an earlier fraud verdict's labels.
create table case_verdicts (
    id bigserial primary key,
    case_id text not null references cases (case_id),
    episode integer not null,
    outcome text not null check (outcome in ('fraud', 'genuine', 'inconclusive')),
    analyst text not null,
    at timestamptz not null default now(),
    from_transaction_id text,  -- fraud from this transaction on, when given
    labelled text[] not null,  -- the transaction ids it published a label for
    is_fraud boolean  -- the value of those labels (null when it labelled nothing)
);
create index case_verdicts_case on case_verdicts (case_id, id);

-- Who did what, when, from where. Append-only: the trigger refuses UPDATE, DELETE and TRUNCATE, for every
-- role (the table's owner included), so an entry once committed stays as written.
create table audit_log (
    id bigserial primary key,
    at timestamptz not null default clock_timestamp(),
    actor text,  -- the signed-in user, an API token's user, or null for the system (the store)
    action text not null,  -- opened, reopened, assigned, note, closed, reversed, rule_added, signed_in ...
    case_id text,
    rule_id text,
    detail jsonb not null default '{}',
    remote_addr text
);
create index audit_log_case on audit_log (case_id, id) where case_id is not null;

create function audit_log_refuse_change() returns trigger
language plpgsql as $$
begin
    raise exception 'audit_log is append-only: % refused', tg_op;
end $$;
create trigger audit_log_append_only before update or delete on audit_log
    for each row execute function audit_log_refuse_change();
create trigger audit_log_no_truncate before truncate on audit_log
    for each statement execute function audit_log_refuse_change();

-- An alerted decision joins its card's case: a card without a case gets one (open), a closed case is
-- reopened (a new episode), an open one counts the alert. Fired by the store's COPY and upserts alike.
create function cases_take_alert() returns trigger
language plpgsql as $$
declare
    ep integer;
    n integer;
begin
    perform 1 from case_alerts where transaction_id = new.transaction_id;
    if found then
        return null;  -- a replay of a decision already joined
    end if;
    insert into cases as c (case_id, status, episode, opened_at, last_alert_at, alerts, max_score, amount_at_risk)
    values (new.customer_id, 'open', 1, now(), now(), 1, new.score, new.amount)
    on conflict (case_id) do update set
        status = case when c.status = 'closed' then 'reopened' else c.status end,
        episode = c.episode + case when c.status = 'closed' then 1 else 0 end,
        opened_at = case when c.status = 'closed' then now() else c.opened_at end,
        closed_at = case when c.status = 'closed' then null else c.closed_at end,
        alerts = case when c.status = 'closed' then 1 else c.alerts + 1 end,
        max_score = case when c.status = 'closed' then excluded.max_score
                         else greatest(c.max_score, excluded.max_score) end,
        amount_at_risk = case when c.status = 'closed' then excluded.amount_at_risk
                              else c.amount_at_risk + excluded.amount_at_risk end,
        last_alert_at = now(),
        updated_at = now()
    returning episode, alerts into ep, n;
    insert into case_alerts (
        transaction_id, case_id, episode, event_day, event_time, terminal_id, amount, score, action, rule_id,
        model_version
    ) values (
        new.transaction_id, new.customer_id, ep, new.event_day, new.event_time, new.terminal_id, new.amount,
        new.score, new.action, new.rule_id, new.model_version
    ) on conflict (transaction_id) do nothing;
    if n = 1 then
        insert into audit_log (actor, action, case_id, detail)
        values (null, case when ep = 1 then 'opened' else 'reopened' end, new.customer_id,
                jsonb_build_object('transaction_id', new.transaction_id, 'action', new.action,
                                   'score', new.score, 'episode', ep));
    end if;
    return null;
end $$;
-- A decision made by a rule a verdict asked for (ids `case-...`: the console's blocks and exemptions) is the
-- answer already given, not a new alert: it neither joins nor reopens the case.
create trigger decisions_join_cases after insert on decisions
    for each row when (new.action <> 'approve' and new.action_source not like 'case-%')
    execute function cases_take_alert();

-- Console accounts. Passwords are stored as scrypt hashes (scorer/db/passwords.py), sessions and API
-- tokens as the SHA-256 of a random token (a stolen table does not sign anyone in).
create table console_users (
    name text primary key check (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    role text not null check (role in ('analyst', 'lead')),
    password_hash text not null,
    disabled boolean not null default false,
    created_at timestamptz not null default now()
);

create table console_sessions (
    token_sha256 bytea primary key,
    user_name text not null references console_users (name) on delete cascade,
    csrf_token text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    remote_addr text
);

create table console_api_tokens (
    name text primary key,
    token_sha256 bytea not null unique,
    user_name text not null references console_users (name) on delete cascade,
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);

-- Failed sign-ins, for throttling (per account and per address over a window).
create table console_login_failures (
    user_name text not null,
    remote_addr text,
    at timestamptz not null default now()
);
create index console_login_failures_user on console_login_failures (user_name, at);
create index console_login_failures_addr on console_login_failures (remote_addr, at);

-- Analysts' SQL reads cases and the audit log like the rest, but never the console's secrets.
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'scorer_analyst') then
        execute 'grant select on cases, case_alerts, case_notes, case_verdicts, audit_log to scorer_analyst';
        execute 'revoke all on console_users, console_sessions, console_api_tokens, console_login_failures from scorer_analyst';
    end if;
end $$;
