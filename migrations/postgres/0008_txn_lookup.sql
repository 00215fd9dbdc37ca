-- Reads join each event to the transaction that sent it (clients' unsigned.transaction_id).
CREATE INDEX event_txn_ids_event ON event_txn_ids (event_id);
