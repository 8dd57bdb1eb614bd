-- 0008: the one place where our statements meet procrastinate's private defer function.
-- Every insert that queues a deployment or a check writes its job through this, as
-- `Task.defer` would (lock and queueing lock as given), in the insert's own statement. plpgsql:
-- its body is checked at its first call, so it can be created before the queue's schema.

CREATE OR REPLACE FUNCTION citrus_defer_job(
    job_queue text,
    job_task text,
    job_priority integer,
    job_lock text,
    job_queueing_lock text,
    job_args jsonb
) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN (procrastinate_defer_jobs_v1(ARRAY[ROW(
        job_queue, job_task, job_priority, job_lock, job_queueing_lock, job_args, NULL
    )::procrastinate_job_to_defer_v1]))[1];
END $$;
