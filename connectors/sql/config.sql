-- rowcast's settings (publication, the custom-model allow-list) and the model catalog as rows,
-- so SQL can check model names
CREATE TABLE IF NOT EXISTS rowcast.config (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS rowcast.models (name text PRIMARY KEY, task text NOT NULL,
                                           description text NOT NULL);
