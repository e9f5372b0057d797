-- Two store instances that meet the same new day at once: the second waited for the first's advisory lock,
-- but its catalog lookup could still miss the partition the first had just committed (the lock is not a
-- relation lock, so nothing made it read the catalog again), and its create failed with "already exists",
-- which stopped it. A partition that exists by the time it is created is now what was wanted.
create or replace function store_ensure_partition(parent text, day date) returns void
language plpgsql as $$
declare
    name text := parent || '_' || to_char(day, 'YYYYMMDD');
begin
    if to_regclass(name) is not null then
        return;
    end if;
    perform pg_advisory_xact_lock(hashtext('scorer-store-partition:' || name));
    begin
        execute format('create table %I partition of %I for values from (%L) to (%L)', name, parent, day, day + 1);
    exception when duplicate_table then
        null;  -- made by another instance meanwhile: the partition is there, as wanted
    end;
end $$;
