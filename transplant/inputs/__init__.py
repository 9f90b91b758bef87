"""Text-side inputs that methods and trainers read: documents and corpora, a sentence
encoder for token strings, fastText vectors, bilingual dictionaries, parallel text."""
