# The database cache's table (CACHE_URL=db, the default): created by a migration so that `migrate` alone
# leaves a working server (rate limits and login throttling count in it). Nothing is done for other caches.

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
    ]

    operations = [
        migrations.RunPython(create_cache_table, migrations.RunPython.noop),
    ]
