package store

// recordDict primes zstd for the short JSON records kept in the B-tree (tickets, message
// stubs): field names and the shapes of values they hold. It is part of the storage format.
// Every value compressed with it names it by recordDictID in its frame and cannot be read
// without these exact bytes, so it must never change; a better dictionary gets a new ID and
// goes beside this one in the decoder (TestRecordDictPinned guards it). Being only a hint, it
// costs ratio, never correctness, when records change shape.
const recordDictID = 1

const recordDict = `{"ticket":1,"seq":2,"direction":"out","from":"support@","from_name":"","to":"@","cc":[""],"subject":"Re: ","message_id":"<@>","in_reply_to":["<@>"],"references":["<@>"],"date":"2026-12-05T06:52:35Z","received":"2026-12-05T06:52:35.004708915Z","text":"","encrypted":false,"signed":true,"verified":true,"author":"","delivery":"sent","kind":"reply","uid":2,"digest":""}{"id":2,"queue":"support","subject":"Re: ","status":"open","customer":"@","participants":[{"address":"@","name":"","verified":false}],"assignee":"","links":[1],"created":"2026-12-05T06:52:35.004708915Z","updated":"2026-12-05T06:52:35.004822538Z","messages":3,"encrypted":true,"waiting":"2026-12-05T06:52:35.000904328Z","unverified":true,"quarantined":true,"auto_reply":true,"bounced":true,"derived":1,"events":[{"time":"2026-12-05T06:52:35.004708915Z","actor":"","what":"status","value":"closed"},{"time":"2026-12-05T06:52:35.004708915Z","actor":"","what":"assign","value":""}]}{"ticket":1,"seq":1,"direction":"in","uid":1,"id_taken":true,"problem":"","head_apart":true}{"id":1,"queue":"support","subject":"","status":"new","customer":"@","participants":[{"address":"@","name":"","verified":true}],"created":"2026-12-05T06:52:35.004708915Z","updated":"2026-12-05T06:52:35.004822538Z","messages":1,"waiting":"2026-12-05T06:52:35.000904328Z","derived":1}`
